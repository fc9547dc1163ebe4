"""experiments/proj: an idea added through the extension points, without touching research/.

The worked example adds the least-squares GAN loss from experiments/proj/lsgan through the loss
table; nothing under research/ may import experiments/ (the core never depends on an idea)."""
import ast
import json
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import pytest

from conftest import REPO
from experiments.proj.lsgan import lsgan_mnist
from research.objectives.gan import LOSSES

REAL, FAKE = jnp.array([0.0, 2.0]), jnp.array([0.0, -1.0])


def test_least_squares_loss_on_hand_checked_values():
    loss = lsgan_mnist.TABLE['least_squares']
    # D: mean((r - 1)^2) / 2 + mean(f^2) / 2 = mean(1, 1) / 2 + mean(0, 1) / 2 = 0.75;
    # G: mean((f - 1)^2) / 2 = mean(1, 4) / 2 = 1.25.
    assert float(loss.discriminator(REAL, FAKE)) == pytest.approx(0.75, rel=1e-6)
    assert float(loss.generator(FAKE)) == pytest.approx(1.25, rel=1e-6)
    assert 'least_squares' not in LOSSES  # added to a copy of the table, not to the core's


def test_lsgan_runs_from_the_command_line_with_its_loss(tmp_path, tiny_mnist_env):
    command = [sys.executable, '-m', 'experiments.proj.lsgan.lsgan_mnist',
               '--config=experiments/proj/lsgan/lsgan_mnist.py:smoke', '--config.model.arch=mlp',
               '--config.scores.at_end=False', f'--workdir={tmp_path / "run"}']
    done = subprocess.run(command, cwd=REPO, env=tiny_mnist_env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').open()]
    assert json.loads((tmp_path / 'run' / 'config.json').read_text())['loss']['kind'] == (
        'least_squares')
    # At the start D's logits are near 0: the least-squares D loss is near (1 + 0) / 2, where
    # the non-saturating one would be near 2 log 2 = 1.39, hinge near 2, Wasserstein near 0.
    assert 0.35 < records[0]['d_loss'] < 0.65, records[0]
    bad = subprocess.run([*command[:3], '--config.loss.kind=nope',
                          f'--workdir={tmp_path / "bad"}'], cwd=REPO, env=tiny_mnist_env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        "FATAL bad config: unknown GAN loss 'nope'; known: non_saturating, hinge, wasserstein, "
        'least_squares')


def test_nothing_in_research_imports_experiments():
    offenders = []
    for path in sorted(pathlib.Path(REPO, 'research').rglob('*.py')):
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                     [node.module or ''] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f'{path.relative_to(REPO)}: {name}' for name in names
                          if name == 'experiments' or name.startswith('experiments.')]
    assert offenders == []
