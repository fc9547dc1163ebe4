"""Reader for CIFAR-10, in either of the versions https://www.cs.toronto.edu/~kriz/cifar.html
publishes. The "python version", the directory `cifar-10-batches-py` that cifar-10-python.tar.gz
unpacks to:

    data_batch_1 .. data_batch_5   the 50,000 training images, 10,000 per file
    test_batch                     the 10,000 test images

Each file is a pickled dict with b'data', uint8 (N, 3072): per row the 1024 red values of a 32x32
image in row-major order, then the green, then the blue; and b'labels', N ints in 0..9.

The "binary version", the directory `cifar-10-batches-bin` that cifar-10-binary.tar.gz unpacks
to (what research/data/download.py fetches, its checksum being the one tfds pins):

    data_batch_1.bin .. data_batch_5.bin, test_batch.bin   the same images, in the same order

Each file is N records of 3073 bytes: the label (0..9), then the same 3072 pixel values.

`read_split` reads whichever version a directory holds whole (the python one if both). The
images come back as uint8 (N, 32, 32, 3), channels last like every image here.

The python files are pickles, and unpickling runs whatever the file says: only point this reader
at a copy of CIFAR-10 you trust. `load` reads a directory only when a user names it. The binary
files are plain bytes; reading them runs nothing.
"""
import os
import pickle

import numpy as np

from research.errors import UserError

FILES = {'train': tuple(f'data_batch_{i}' for i in range(1, 6)), 'test': ('test_batch',)}
BINARY_FILES = {split: tuple(f'{name}.bin' for name in names) for split, names in FILES.items()}
_SIDE = 32
_RECORD = 1 + 3 * _SIDE * _SIDE  # a binary record: the label byte, then the pixels


class CifarError(UserError, ValueError):
    """A CIFAR-10 batch file is not what the format promises; the message names the file."""


def describe_files(split: str) -> str:
    """The files a directory needs for `split`, in words, for error messages."""
    return (f"CIFAR-10's python batches ({_listed(FILES[split])}; cifar-10-python.tar.gz from "
            'https://www.cs.toronto.edu/~kriz/cifar.html, unpacked) or its binary batches '
            f'({_listed(BINARY_FILES[split])}; cifar-10-binary.tar.gz, unpacked)')


def _listed(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else f'{names[0]} .. {names[-1]}'


def missing_files(directory: str, split: str) -> list[str]:
    """The names of the split's batch files that `directory` lacks: none if it holds either
    version whole; else the binary names if only binary files are there, the python names if
    not."""
    python = _absent(directory, FILES[split])
    binary = _absent(directory, BINARY_FILES[split])
    if not python or not binary:  # one version is whole
        return []
    if len(python) == len(FILES[split]) and len(binary) < len(BINARY_FILES[split]):
        return binary  # only binary files are there: name the ones they lack
    return python


def _absent(directory: str, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if not os.path.isfile(os.path.join(directory, name))]


def read_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 (N, 32, 32, 3) images, int32 (N,) labels)."""
    try:
        with open(path, 'rb') as f:
            batch = pickle.load(f, encoding='bytes')
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise CifarError(f'{path}: not a CIFAR-10 batch (unpickling failed: '
                         f'{type(e).__name__}: {e})') from e
    if not isinstance(batch, dict) or b'data' not in batch or b'labels' not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise CifarError(f"{path}: expected a dict with b'data' and b'labels', got {keys}")
    data, labels = np.asarray(batch[b'data']), np.asarray(batch[b'labels'])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * _SIDE * _SIDE:
        raise CifarError(f"{path}: b'data' must be uint8 (N, 3072), got {data.dtype} "
                         f'{data.shape}')
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype,
                                                                          np.integer):
        raise CifarError(f"{path}: b'labels' must be {len(data)} integers, got {labels.dtype} "
                         f'{labels.shape}')
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise CifarError(f"{path}: labels must lie in 0..9, found {labels.min()}..{labels.max()}")
    images = data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int32)


def read_binary_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch file -> (uint8 (N, 32, 32, 3) images, int32 (N,) labels)."""
    with open(path, 'rb') as f:
        raw = np.frombuffer(f.read(), np.uint8)
    if len(raw) % _RECORD:
        raise CifarError(f'{path}: not a CIFAR-10 binary batch ({len(raw)} bytes is not a whole '
                         f'number of {_RECORD}-byte records: a label byte, then 3072 pixels)')
    records = raw.reshape(-1, _RECORD)
    labels = records[:, 0]
    if len(labels) and labels.max() > 9:
        raise CifarError(f'{path}: labels must lie in 0..9, found {labels.min()}..{labels.max()}')
    images = records[:, 1:].reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int32)


def read_split(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All of the split's batch files in `directory`, concatenated in file order: the python
    batches if the directory holds them all, else the binary ones."""
    missing = missing_files(directory, split)
    if missing:
        raise FileNotFoundError(f'{directory} lacks {", ".join(missing)}')
    if _absent(directory, FILES[split]):
        parts = [read_binary_batch(os.path.join(directory, name))
                 for name in BINARY_FILES[split]]
    else:
        parts = [read_batch(os.path.join(directory, name)) for name in FILES[split]]
    return (np.concatenate([images for images, _ in parts]),
            np.concatenate([labels for _, labels in parts]))


def write_batch(path: str, images: np.ndarray, labels) -> None:
    """Writes uint8 (N, 32, 32, 3) images and their labels as one batch file of the same format
    (for tests, and for subsets of CIFAR-10 that `load` can read)."""
    _check_images(images)
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    with open(path, 'wb') as f:
        pickle.dump({b'data': data, b'labels': [int(label) for label in labels]}, f)


def write_binary_batch(path: str, images: np.ndarray, labels) -> None:
    """Writes uint8 (N, 32, 32, 3) images and their labels (0..9) as one binary batch file (for
    tests)."""
    _check_images(images)
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f'labels must be {len(images)} integers in 0..9, got {labels.dtype} '
                         f'{labels.shape}')
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    with open(path, 'wb') as f:
        f.write(np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1).tobytes())


def _check_images(images: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.shape[1:] != (_SIDE, _SIDE, 3):
        raise ValueError(f'images must be uint8 (N, 32, 32, 3), got {images.dtype} '
                         f'{images.shape}')
