"""Data: the dataset catalog, loading from whichever source has it, batching.

    from research import data
    train = data.load('mnist', 'train')        # -> data.Split, from the first source that has it
    data.load('mnist', 'test', source='download')  # or from this source only (data.SOURCES)
    shape = data.DATASETS['mnist'].image_shape  # (28, 28, 1)
    pipeline = data.BatchPipeline({'image': train.images, 'label': train.labels},
                                  global_batch=128, seed=0)
    for batch in pipeline.iterate(start_step): ...
"""

from research.data.catalog import DATASETS, Dataset, DebianCopy, lookup
from research.data import download
from research.data.datasets import (
    SOURCES,
    SPLITS,
    DatasetUnavailableError,
    Split,
    check_source,
    env_var,
    load,
    loaded,
    record,
    reset_loaded,
    tfds_usable,
)
from research.data.idx import IdxError, read_idx, write_idx
from research.data.pipeline import BatchPipeline, IndexedPipeline, Pipeline
from research.data.text import (CorpusChangedError, CorpusUnavailableError, Vocab, WindowPipeline,
                                check_vocab, eval_windows, load_corpus, split_tokens,
                                vocab_record)
from research.data.tfds_probe import tfds_available
from research.data.train_eval import (describe, load_splits, load_train_eval, periodic,
                                      validation_split)
from research.data.transforms import binarize, hold_out, images_to_float

__all__ = [
    'DATASETS',
    'SOURCES',
    'SPLITS',
    'BatchPipeline',
    'CorpusChangedError',
    'CorpusUnavailableError',
    'Dataset',
    'DatasetUnavailableError',
    'DebianCopy',
    'IdxError',
    'IndexedPipeline',
    'Pipeline',
    'Split',
    'Vocab',
    'WindowPipeline',
    'binarize',
    'check_source',
    'check_vocab',
    'describe',
    'download',
    'env_var',
    'eval_windows',
    'hold_out',
    'images_to_float',
    'load',
    'load_corpus',
    'load_splits',
    'load_train_eval',
    'periodic',
    'loaded',
    'lookup',
    'read_idx',
    'record',
    'reset_loaded',
    'split_tokens',
    'tfds_available',
    'tfds_usable',
    'validation_split',
    'vocab_record',
    'write_idx',
]
