"""Language-model loss over a whole split, every character counted exactly once.

The split is cut into non-overlapping windows of `seq_len` + 1 tokens (`data.eval_windows`):
every target tokens[1:] is predicted once, from the characters before it in its window (at most
`seq_len`, as in training), and the padded tail of the last window is masked out. Per-window sums
come back from `DatasetEvaluator` (the last batch padded, the padding dropped) and are added in
float64 on the host, so the mean is exact over the split, never a mean of per-batch means.
Reported in nats per character and bits per character (nats / ln 2).
"""
import math

import jax
import numpy as np

from research.data.text import eval_windows
from research.evals.evaluator import DatasetEvaluator
from research.objectives.lm import window_nll_fn


def make_lm_evaluator(model, seq_len: int, batch_size: int, mesh=None):
    """evaluate(params, tokens) -> {'loss': nats/char, 'bits_per_char', 'chars'} over all of
    `tokens` (a whole split). Compiles once, on first use."""
    evaluator = DatasetEvaluator(window_nll_fn(model), batch_size, mesh)
    key = jax.random.PRNGKey(0)  # unused: evaluation runs without dropout

    def evaluate(params, tokens: np.ndarray) -> dict:
        windows = eval_windows(tokens, seq_len)
        total = float(np.sum(evaluator(params, windows, key)))
        chars = int(np.sum(windows[:, 1:] >= 0))  # == len(tokens) - 1
        loss = total / chars
        return {'loss': loss, 'bits_per_char': loss / math.log(2), 'chars': chars}

    return evaluate
