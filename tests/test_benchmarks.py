"""The accelerator benchmark command (benchmarks/accelerator.py) in its smoke mode, on one CPU
device, for the rows whose code every other row shares (a model step through bench.measure, a
fused and a population variant), the model rows in float32 and bf16: each row's numbers hang
together, each is printed as it is done, and the MLP GAN's and the RBM's FLOPs are the hand
counts in both precisions. The whole smoke table (every model and variant) takes about 2.5 CPU-minutes,
too long for the suite; run it before spending GPU time: python -m benchmarks.accelerator --smoke.
And benchmarks/smoke_fingerprint.py keeps every logged number but the clock's."""
import json
import os
import subprocess
import sys

import pytest

from research.train.run_info import git_commit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


ROWS = ('mlpgan', 'rbm', 'fused-mlpgan', 'population-mlpgan')


def test_the_accelerator_bench_in_its_smoke_mode(tmp_path):
    out = tmp_path / 'bench.json'
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # one device, as a GPU
    done = subprocess.run([sys.executable, '-m', 'benchmarks.accelerator', '--smoke', '--out',
                           str(out), '--only', *ROWS], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    table = json.loads(out.read_text())
    assert json.loads(done.stdout) == table
    assert (table['platform'], table['device_count'], table['smoke']) == ('cpu', 1, True)
    assert table['commit'] == git_commit()
    rows = table['rows']
    assert [(r.get('bench', r['model']), r.get('precision')) for r in rows] == [
        ('mlpgan', 'f32'), ('mlpgan', 'bf16'), ('rbm', 'f32'), ('rbm', 'bf16'), ('fused', None),
        ('population', None)]
    assert [json.loads(line) for line in done.stderr.splitlines()
            if line.startswith('{')] == rows  # each row as it is done
    for row in rows[:4]:
        assert row['batch'] == 4 and row['steps'] == 2, row
        assert row['examples_per_s'] == pytest.approx(4 * row['steps_per_s'], rel=0.01)
        assert row['flops_per_s'] == pytest.approx(row['flops_per_step'] * row['steps_per_s'],
                                                   rel=0.01)
        assert row['mfu'] is None  # no peak is known for a CPU
    # the bench counts the step it times, bf16 operands or not
    assert rows[0]['flops_per_step'] == rows[1]['flops_per_step'] == _mlp_gan_flops(4)
    # CD-1: v0 W, h0 W^T, v1 W and the two outer products of the gradient
    assert rows[2]['flops_per_step'] == rows[3]['flops_per_step'] == 2 * 4 * 784 * 500 * 5
    for row in rows[4:]:
        rates = (('fused_examples_per_s', 'single_examples_per_s') if row['bench'] == 'fused'
                 else ('population_examples_per_s', 'one_member_examples_per_s'))
        assert row['speedup'] == pytest.approx(row[rates[0]] / row[rates[1]], rel=0.01), row


def _mlp_gan_flops(batch: int) -> int:
    """One MLP GAN step (G 100-256-256-784, D 784-256-256-1), by hand, in multiply-adds x 2.
    D's update sees 2 x batch images (real and fake): forward, weight gradients, and input
    gradients of its upper two layers; G's forward for those fakes. G's update: G forward, D
    forward and input gradients of all three layers, G's weight gradients and its upper two
    layers' input gradients."""
    g = 100 * 256 + 256 * 256 + 256 * 784
    d = 784 * 256 + 256 * 256 + 256 * 1
    d_step = 2 * batch * (3 * d - 784 * 256) + batch * g
    g_step = batch * (g + 2 * d + g + (g - 100 * 256))
    return 2 * (d_step + g_step)


def test_smoke_fingerprints_leave_out_what_the_clock_decides(tmp_path):
    # The loop logs `time`, `examples_per_s` and `flops_per_s`; two runs of the same maths
    # differ in those and in nothing else, so a fingerprint must keep every other key.
    from benchmarks import smoke_fingerprint
    record = {'step': 2, 'loss': 0.5, 'time': 1.0, 'examples_per_s': 3.0, 'flops_per_s': 4e9}
    (tmp_path / 'metrics.jsonl').write_text(json.dumps(record) + '\n')
    assert smoke_fingerprint.fingerprint(str(tmp_path)) == {
        'metrics.jsonl': [{'step': 2, 'loss': 0.5}]}
