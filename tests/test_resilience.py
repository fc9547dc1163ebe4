"""Faults: a run stopped by SIGTERM (preemption) or killed by SIGKILL at random steps, restarted
each time by the same command, ends with exactly the parameters of a run never interrupted, bit
for bit, for the GAN and the VAE; checkpoints left half-written or unreadable are skipped for
the last good one, with a warning."""
import os
import random
import re
import signal
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import logging

from conftest import REPO
from research.data import BatchPipeline
from research.train import cli, loop, mesh as mesh_lib
from research.train.checkpoint import Checkpointer

STEPS = 30
COMMANDS = {
    'gan': ['-m', 'experiments.gan_mnist', '--config=experiments/gan_mnist.py:smoke',
            '--config.model.arch=mlp', '--config.scores.at_end=False',
            '--config.export.num_samples=16', '--config.train.sample_every=1000'],
    'vae': ['-m', 'experiments.vae_mnist', '--config=experiments/vae_mnist.py:smoke',
            '--config.scores.at_end=False', '--config.eval.k=2', '--config.eval.chunk=1',
            '--config.export.num_samples=16', '--config.train.sample_every=1000',
            '--config.train.eval_every=1000'],
}
SCHEDULE = [f'--config.train.steps={STEPS}', '--config.train.checkpoint_every=4',
            '--config.train.log_every=1']


def start(model, workdir, env):
    return subprocess.Popen([sys.executable, *COMMANDS[model], *SCHEDULE, '--workdir',
                             str(workdir)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def run_to_end(model, workdir, env):
    process = start(model, workdir, env)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output
    return output


def interrupt(model, workdir, env, at_step, sig):
    """Starts the command and sends `sig` once it has logged step `at_step` (or later)."""
    process = start(model, workdir, env)
    lines = []
    for line in process.stdout:
        lines.append(line)
        match = re.match(r'step (\d+)/', line)
        if match and int(match.group(1)) >= at_step:
            process.send_signal(sig)
            break
    lines.append(process.communicate(timeout=300)[0])
    return process.returncode, ''.join(lines)


def final_state(workdir):
    """The whole train state at the last step: parameters, optimizer state, RNG, EMA."""
    manager = ocp.CheckpointManager(os.path.abspath(workdir / 'checkpoints'))
    assert manager.latest_step() == STEPS
    restored = manager.restore(STEPS, args=ocp.args.StandardRestore())
    manager.close()
    return restored


@pytest.mark.parametrize('model', ['gan', 'vae'])
def test_sigterm_and_sigkills_resume_exactly(model, tiny_mnist_env, tmp_path):
    env = tiny_mnist_env
    rng = random.Random(model)
    interrupted = tmp_path / 'interrupted'
    straight = start(model, tmp_path / 'straight', env)  # alongside: the reference run
    # Preemption: the step in flight finishes, a checkpoint is saved, exit status 143.
    code, output = interrupt(model, interrupted, env, rng.randint(2, 9), signal.SIGTERM)
    assert code == 143, output
    stopped = int(re.search(r'preempted \(SIGTERM\) at step (\d+) of 30: saved a checkpoint '
                            r'in .*; run the same command to resume', output).group(1))
    assert Checkpointer(str(interrupted / 'checkpoints')).latest_step() == stopped
    # Kills at random steps, mid-training or mid-save: at most the steps since the last
    # checkpoint are lost, and each restart resumes.
    resumed_at = [stopped]
    for at_step in sorted(rng.sample(range(stopped + 2, STEPS - 2), 2)):
        code, output = interrupt(model, interrupted, env, at_step, signal.SIGKILL)
        assert code == -signal.SIGKILL, output
        assert f'resuming from the checkpoint at step {resumed_at[-1]}' in output
        resumed_at.append(Checkpointer(str(interrupted / 'checkpoints')).latest_step())
    output = run_to_end(model, interrupted, env)
    assert f'resuming from the checkpoint at step {resumed_at[-1]}' in output
    output = straight.communicate(timeout=300)[0]
    assert straight.returncode == 0, output
    interrupted, straight = final_state(interrupted), final_state(tmp_path / 'straight')
    assert jax.tree.structure(interrupted) == jax.tree.structure(straight)
    jax.tree.map(np.testing.assert_array_equal, interrupted, straight)


def save_three(directory):
    state = {'w': jnp.arange(4.0)}
    checkpoints = Checkpointer(str(directory))
    for step in (1, 2, 3):
        checkpoints.save(step, {'w': state['w'] * step})
    checkpoints.wait()
    checkpoints.close()
    return state


def test_a_half_written_checkpoint_is_skipped_with_a_warning(tmp_path, caplog):
    like = save_three(tmp_path)
    (tmp_path / '4.orbax-checkpoint-tmp-1234').mkdir()  # what a kill mid-save leaves
    checkpoints = Checkpointer(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        restored = checkpoints.restore_latest(like)
    np.testing.assert_array_equal(restored['w'], np.arange(4.0) * 3)
    assert 'skipping the half-written checkpoint 4.orbax-checkpoint-tmp-1234' in caplog.text
    checkpoints.close()


def test_an_unreadable_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    like = save_three(tmp_path)
    for path in sorted((tmp_path / '3').rglob('*'), reverse=True):  # its files lost
        if path.is_file():
            path.write_bytes(b'')
    checkpoints = Checkpointer(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        restored = checkpoints.restore_latest(like)
    np.testing.assert_array_equal(restored['w'], np.arange(4.0) * 2)
    assert re.search(r'checkpoint 3 in .* cannot be restored .*; falling back to checkpoint 2',
                     caplog.text)
    checkpoints.close()


@flax.struct.dataclass
class Counter:
    step: jax.Array
    x: jax.Array


def test_debug_runs_the_step_eagerly_and_stops_at_the_first_nan(tmp_path):
    calls = []

    def step_fn(state, batch):
        calls.append(isinstance(state.x, jax.core.Tracer))  # Python runs every step only eagerly
        x = state.x + jnp.log(2.5 - state.step) * jnp.mean(batch['v'])  # NaN at step 4
        return state.replace(step=state.step + 1, x=x), {'loss': jnp.mean(x)}

    pipeline = BatchPipeline({'v': np.ones((8, 2), np.float32)}, 4, seed=0)
    state = Counter(step=jnp.zeros((), jnp.int32), x=jnp.zeros(()))
    mesh = mesh_lib.data_mesh(jax.devices()[:1])
    schedule = dict(steps=6, log_every=1, checkpoint_every=100)
    with jax.disable_jit(), jax.debug_nans(True):
        with pytest.raises(FloatingPointError):
            loop.train(schedule, workdir=str(tmp_path), init=lambda key: state, step=step_fn,
                       pipeline=pipeline, mesh=mesh)
    assert calls == [False] * 4  # three good steps, and the fourth stopped at its log
    # Without --debug the same run compiles the step once and stops at the NaN loss it logs.
    calls.clear()
    with pytest.raises(loop.NonFiniteLossError, match='non-finite loss at step 4'):
        loop.train(schedule, workdir=str(tmp_path / 'jit'), init=lambda key: state, step=step_fn,
                   pipeline=pipeline, mesh=mesh)
    assert calls == [True]


def test_enable_debug_sets_both_switches():
    before = (jax.config.jax_disable_jit, jax.config.jax_debug_nans)
    try:
        cli.enable_debug()
        assert jax.config.jax_disable_jit and jax.config.jax_debug_nans
    finally:
        jax.config.update('jax_disable_jit', before[0])
        jax.config.update('jax_debug_nans', before[1])
