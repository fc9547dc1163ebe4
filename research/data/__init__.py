"""Data: IDX files, dataset loading from whichever source has it, batching.

    from research import data
    train = data.load('mnist', 'train')        # -> data.Split
    pipeline = data.BatchPipeline({'image': train.images, 'label': train.labels},
                                  global_batch=128, seed=0)
    for batch in pipeline.iterate(start_step): ...
"""

from research.data.datasets import (
    CLASS_NAMES,
    KNOWN_DATASETS,
    SPLITS,
    DatasetUnavailableError,
    Split,
    env_var,
    load,
    tfds_usable,
)
from research.data.idx import IdxError, read_idx, write_idx
from research.data.pipeline import BatchPipeline
from research.data.text import (CorpusUnavailableError, Vocab, WindowPipeline, check_vocab,
                                eval_windows, load_corpus, split_tokens)
from research.data.train_eval import load_train_eval
from research.data.transforms import binarize, hold_out

__all__ = [
    'CLASS_NAMES',
    'KNOWN_DATASETS',
    'SPLITS',
    'BatchPipeline',
    'CorpusUnavailableError',
    'DatasetUnavailableError',
    'IdxError',
    'Split',
    'Vocab',
    'WindowPipeline',
    'binarize',
    'check_vocab',
    'env_var',
    'eval_windows',
    'hold_out',
    'load',
    'load_corpus',
    'load_train_eval',
    'read_idx',
    'split_tokens',
    'tfds_usable',
    'write_idx',
]
