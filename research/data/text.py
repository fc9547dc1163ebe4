"""Character-level text: the corpus, its vocabulary, random training windows, exact eval windows.

    text, source = load_corpus(config_path)          # the first source that has it
    vocab = Vocab.from_text(text)
    record = vocab_record(vocab, text, source)       # the experiment saves it with the run
    check_vocab(saved, record, path)                 # a resumed run must see the same corpus
    train, validation = split_tokens(vocab.encode(text))
    pipeline = WindowPipeline(train, seq_len=256, global_batch=64, seed=0)

This module reads and computes; it writes nothing (the experiment owns its workdir).
Sources (`data.source`, as for images: auto|dir|download|tfds|embedded), in this order for auto:
  dir       a text file named in the config (data.path; then no other source is tried), else
            the copy at ../shared/data/tinyshakespeare/input.txt on development machines (looked
            up from the current directory and from the repository root);
  download  tiny Shakespeare's input.txt from its canonical host (or $DEEPGEN_DATA_MIRROR), checked
            against its pinned sha256 and cached (research/data/download.py); offline, auto goes on;
  tfds      tensorflow-datasets' `tiny_shakespeare`, only where `tfds_available`
            (research/data/tfds_probe.py) says it can work now (offline, tfds would retry for
            minutes);
  embedded  none: no corpus ships inside a package.
None: `CorpusUnavailableError` at once, saying how to provide one.
The split is nanoGPT's: the first 90% of the characters train, the last 10% validate.
"""
import hashlib
import itertools
import operator
import os
from pathlib import Path

import numpy as np

from research.data import download
from research.data.datasets import DatasetUnavailableError, check_source, record
from research.data.tfds_probe import tfds_available
from research.errors import UserError

SHARED_CORPUS = os.path.join('..', 'shared', 'data', 'tinyshakespeare', 'input.txt')
REPO_ROOT = Path(__file__).resolve().parents[2]
TFDS_NAME = 'tiny_shakespeare'
TFDS_HOST = ('raw.githubusercontent.com', 443)  # where tfds downloads the text from
TRAIN_FRACTION = 0.9


class CorpusUnavailableError(DatasetUnavailableError):
    """No source could provide a text corpus (the message lists them and why)."""


def _tfds_usable() -> tuple[bool, str]:
    # A name of its own, so tests can stub the probe out for text alone.
    return tfds_available(TFDS_NAME, *TFDS_HOST)


def _load_tfds() -> str:
    import tensorflow_datasets as tfds  # slow to import; only when used
    # tfds cuts the text into train/validation/test pieces; joined they are the whole corpus.
    parts = [example['text'] for split in ('train', 'validation', 'test')
             for example in tfds.as_numpy(tfds.load(TFDS_NAME, split=split))]
    return b''.join(parts).decode('utf-8')


def load_corpus(path: str = '', source: str = 'auto') -> tuple[str, str]:
    """(text, source): the corpus from `source`, or (auto) the first source that has it (module
    docstring); a source other than 'auto' that cannot serve is an error, never a fallback."""
    check_source(source)
    if path and source not in ('auto', 'dir'):
        raise CorpusUnavailableError(f'data.path {path!r} names a file, but data.source is '
                                     f'{source!r}: use source dir (or auto), or drop the path')
    text, where, kind = None, '', ''
    tried = []
    if source in ('auto', 'dir'):
        if path:
            if not os.path.isfile(path):
                raise CorpusUnavailableError(f'data.path {path!r} is not a file')
            text, where, kind = _read(path), f'text file {os.path.abspath(path)}', 'dir'
        else:
            tried.append('dir: data.path not given (--config.data.path=FILE, any UTF-8 text)')
            for candidate in dict.fromkeys([Path(SHARED_CORPUS), REPO_ROOT / SHARED_CORPUS]):
                if candidate.is_file():
                    text, where, kind = _read(candidate), f'text file {candidate.resolve()}', 'dir'
                    break
                tried.append(f'dir: {candidate}: not a file')
    if text is None and source in ('auto', 'download'):
        try:
            directory = download.fetch(TFDS_NAME)
            file = os.path.join(directory, download.FILES[TFDS_NAME][0].name)
            text, where, kind = _read(file), f'text file {file} (downloaded)', 'download'
        except download.SourceUnreachable as e:
            tried.append(f'download: offline: {e}')
        except download.DownloadError as e:
            raise CorpusUnavailableError(
                f'{TFDS_NAME}: download failed: {e}; not falling back to other sources '
                '(--config.data.source names one, or --config.data.path a file)') from None
    if text is None and source in ('auto', 'tfds'):
        ok, why = _tfds_usable()
        if ok:
            text, where, kind = _load_tfds(), f'tensorflow-datasets {TFDS_NAME} ({why})', 'tfds'
        else:
            tried.append(f'tfds: tensorflow-datasets {TFDS_NAME}: {why}')
    if text is None and source == 'embedded':
        tried.append('embedded: no text corpus ships inside a package')
    if text is None:
        forced = '' if source == 'auto' else f' (data.source {source!r} was asked for)'
        raise CorpusUnavailableError(
            f'no text corpus is available{forced}. Tried:\n'
            + ''.join(f'  - {line}\n' for line in tried)
            + "Name a text file with --config.data.path=FILE (e.g. tiny shakespeare's "
            f'input.txt), connect to the network (it is downloaded once into '
            f'{download.cache_dir()}), or set $DEEPGEN_DATA_MIRROR to a mirror of input.txt.')
    record({'dataset': 'text', 'split': '', 'source': kind, 'where': where,
            'characters': len(text)})
    return text, where


def _read(path) -> str:
    text = Path(path).read_text(encoding='utf-8')
    if len(text) < 100:
        raise CorpusUnavailableError(f'{path}: only {len(text)} characters; need at least 100')
    return text


class Vocab:
    """The sorted set of characters of a corpus; token id = index in `chars`."""

    def __init__(self, chars: str):
        if len(set(chars)) != len(chars) or list(chars) != sorted(chars):
            raise ValueError(f'vocabulary must be sorted distinct characters, got {chars!r}')
        self.chars = chars
        self._index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> 'Vocab':
        return cls(''.join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        try:
            return np.array([self._index[c] for c in text], np.int32)
        except KeyError as e:
            raise ValueError(f'character {e.args[0]!r} is not in the vocabulary') from None

    def decode(self, ids) -> str:
        return ''.join(self.chars[i] for i in np.asarray(ids).ravel())


def vocab_record(vocab: Vocab, text: str, source: str) -> dict:
    """What pins a run to its corpus (JSON-ready): the vocabulary, the corpus's length and
    sha256, and where it came from (for the message only)."""
    return {'chars': vocab.chars, 'corpus_chars': len(text),
            'corpus_sha256': hashlib.sha256(text.encode('utf-8')).hexdigest(), 'source': source}


class CorpusChangedError(UserError, ValueError):
    """A resumed run was given another corpus than the one its workdir started with."""


def check_vocab(saved: dict, record: dict, path: str) -> None:
    """Raises CorpusChangedError if `record` (this run's corpus) is not the `saved` one read
    from `path`: another vocabulary would silently reinterpret every token id of the checkpoint,
    another text with the same characters would shift the train/validation split."""
    for key in ('chars', 'corpus_chars', 'corpus_sha256'):
        if saved.get(key) != record[key]:
            raise CorpusChangedError(
                f'{path}: the corpus differs from the one this run started with ({key} '
                f'{saved.get(key)!r} -> {record[key]!r}; then from {saved.get("source")}, '
                f'now from {record["source"]}); use a new workdir or the original corpus')


def split_tokens(tokens: np.ndarray, train_fraction: float = TRAIN_FRACTION):
    """(train, validation): the first `train_fraction` of the tokens, and the rest."""
    n = int(len(tokens) * train_fraction)
    return tokens[:n], tokens[n:]


class WindowPipeline:
    """Random windows of seq_len + 1 tokens ({'tokens': int32 (local_batch, seq_len + 1)}).

    Global batch `step` starts its windows at np.random.default_rng([seed, step]).integers(0,
    N - seq_len, global_batch): a pure function of (seed, step), so there is no iterator state
    and a resumed run draws exactly the windows the uninterrupted one would. Process p takes rows
    [p * local_batch, (p + 1) * local_batch) of the global batch. An IndexedPipeline
    (research/data/pipeline.py): `indices(step)` are the windows' token positions, so
    batch(step) == {'tokens': arrays['tokens'][indices(step)]}.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, global_batch: int, seed: int,
                 process_index: int | None = None, process_count: int | None = None):
        if process_index is None or process_count is None:
            import jax
            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        if seq_len < 1 or len(tokens) < seq_len + 1:
            raise ValueError(f'need 1 <= seq_len < {len(tokens)} tokens, got seq_len={seq_len}')
        if global_batch < 1 or global_batch % process_count:
            raise ValueError(f'global_batch={global_batch} must be a positive multiple of '
                             f'process_count={process_count}')
        if not 0 <= process_index < process_count or seed < 0:
            raise ValueError(f'need 0 <= process_index < process_count and seed >= 0, got '
                             f'{process_index}, {process_count}, {seed}')
        self.tokens = np.asarray(tokens, np.int32)
        self.arrays = {'tokens': self.tokens}
        self.seq_len, self.global_batch, self.seed = seq_len, global_batch, seed
        self.local_batch = global_batch // process_count
        self.process_index = process_index
        self._offsets = np.arange(seq_len + 1)

    def indices(self, step: int) -> np.ndarray:
        """int (local_batch, seq_len + 1): the token positions of this process's windows."""
        step = operator.index(step)
        if step < 0:
            raise ValueError(f'step must be non-negative, got {step}')
        starts = np.random.default_rng([self.seed, step]).integers(
            0, len(self.tokens) - self.seq_len, self.global_batch)
        mine = starts[self.process_index * self.local_batch:][:self.local_batch]
        return mine[:, None] + self._offsets

    def batch(self, step: int) -> dict[str, np.ndarray]:
        rows = self.indices(step)
        return {key: value[rows] for key, value in self.arrays.items()}

    def iterate(self, start_step: int = 0):
        start_step = operator.index(start_step)
        if start_step < 0:
            raise ValueError(f'start_step must be non-negative, got {start_step}')
        return map(self.batch, itertools.count(start_step))


def eval_windows(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """int32 (W, seq_len + 1) windows in which every target tokens[1:] appears exactly once.

    Window w holds tokens[w * seq_len : w * seq_len + seq_len + 1]: its inputs are the first
    seq_len, its targets the last seq_len, so consecutive windows share one token (the last
    target of one is the first input of the next) and the targets tile tokens[1:]. The last
    window is padded with -1, which marks a position that is no target.
    """
    tokens = np.asarray(tokens, np.int32)
    if len(tokens) < 2:
        raise ValueError(f'need at least 2 tokens to predict one, got {len(tokens)}')
    count = -(-(len(tokens) - 1) // seq_len)
    padded = np.full(count * seq_len + 1, -1, np.int32)
    padded[:len(tokens)] = tokens
    index = np.arange(count)[:, None] * seq_len + np.arange(seq_len + 1)
    return padded[index]
