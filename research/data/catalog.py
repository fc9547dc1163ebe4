"""The image datasets `load` knows, one entry each: what the data is and where it can be found.

    DATASETS['fashion_mnist'].image_shape    # (28, 28, 1)
    DATASETS['cifar10'].class_names[3]       # 'cat'

Adding a dataset is one entry here (plus a reader in research/data/readers.py if its files are
in a new format); research/data/datasets.py walks every entry's sources the same way.
"""
import dataclasses
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from research.errors import ConfigError
from research.data.readers import CifarBatches, IdxFiles, MlxtendMnist


class DirectoryReader(Protocol):
    """Reads one split of a directory of a dataset's standard files (research/data/readers.py)."""
    kind: str
    contents: str

    def missing(self, directory: str, split: str) -> list[str]: ...

    def describe(self, split: str) -> str: ...

    def read(self, directory: str, split: str) -> tuple[np.ndarray, np.ndarray]: ...


class OfflineSample(Protocol):
    """A copy of one split that ships inside a package, for machines without the files."""
    name: str
    source: str

    def read(self) -> tuple[np.ndarray, np.ndarray]: ...


@dataclasses.dataclass(frozen=True)
class DebianCopy:
    package: str     # `apt-get install <package>`
    directory: str   # where it puts the dataset's files


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    image_shape: tuple[int, int, int]   # (H, W, C) of every image
    class_names: tuple[str, ...]        # what label c means: the official label order
    reader: DirectoryReader             # reads a directory of the standard files
    env_var: str                        # names such a directory
    tfds_host: tuple[str, int]          # (host, port) tensorflow-datasets downloads it from
    debian: DebianCopy | None = None    # a Debian package of the files, if any
    offline: Mapping[str, OfflineSample] = dataclasses.field(default_factory=dict)  # by split


DATASETS: dict[str, Dataset] = {
    'mnist': Dataset(
        name='mnist', image_shape=(28, 28, 1),
        class_names=tuple(str(digit) for digit in range(10)),
        reader=IdxFiles(), env_var='DEEPGEN_MNIST_DIR',
        tfds_host=('storage.googleapis.com', 443),
        offline={'train': MlxtendMnist()}),
    'fashion_mnist': Dataset(
        name='fashion_mnist', image_shape=(28, 28, 1),
        class_names=('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                     'Sneaker', 'Bag', 'Ankle boot'),
        reader=IdxFiles(), env_var='DEEPGEN_FASHION_MNIST_DIR',
        tfds_host=('fashion-mnist.s3-website.eu-central-1.amazonaws.com', 80),
        debian=DebianCopy('dataset-fashion-mnist', '/usr/share/datasets/fashion-mnist')),
    'cifar10': Dataset(
        name='cifar10', image_shape=(32, 32, 3),
        class_names=('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
                     'ship', 'truck'),
        reader=CifarBatches(), env_var='DEEPGEN_CIFAR10_DIR',
        tfds_host=('www.cs.toronto.edu', 443)),
}


def lookup(name: str) -> Dataset:
    """DATASETS[name], or a ValueError that lists the known names."""
    if name not in DATASETS:
        raise ConfigError(f'unknown dataset {name!r}; known datasets: {", ".join(DATASETS)}')
    return DATASETS[name]
