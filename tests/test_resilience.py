"""Faults: a run stopped by SIGTERM (preemption) or Ctrl-C, or killed by SIGKILL at random steps,
restarted each time by the same command, ends with exactly the parameters of a run never
interrupted, bit for bit, for the GAN and the VAE; checkpoints left half-written, unreadable or
unlike their digest are skipped for the newest intact one, with a warning, and a checkpoint of
another state stops the run."""
import json
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
from research.errors import DiskFullError
from research.train import cli, loop, mesh as mesh_lib
from research.train.checkpoint import (CheckpointMismatchError, Checkpointer,
                                       NoIntactCheckpointError)

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
    assert Checkpointer(str(workdir / 'checkpoints')).latest_step() == STEPS
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(os.path.abspath(workdir / 'checkpoints' / str(STEPS) / 'state'))


# The GAN is stopped by SIGTERM (a preemption), the VAE by Ctrl-C (SIGINT): the same path,
# another signal, exit status and message.
STOPS = {'gan': (signal.SIGTERM, 143, r'preempted \(SIGTERM\)'),
         'vae': (signal.SIGINT, 130, r'stopped by Ctrl-C')}


@pytest.mark.parametrize('model', ['gan', 'vae'])
def test_sigterm_or_ctrl_c_and_sigkills_resume_exactly(model, tiny_mnist_env, tmp_path):
    env = tiny_mnist_env
    rng = random.Random(model)
    interrupted = tmp_path / 'interrupted'
    straight = start(model, tmp_path / 'straight', env)  # alongside: the reference run
    # Preemption: the step in flight finishes, a checkpoint is saved, exit status 143 or 130.
    sig, status, said = STOPS[model]
    code, output = interrupt(model, interrupted, env, rng.randint(2, 9), sig)
    assert code == status, output
    stopped = int(re.search(said + r' at step (\d+) of 30: saved a checkpoint '
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


def test_a_save_on_8_cpu_devices_writes_whole_arrays_and_compiles_nothing(tmp_path):
    """orbax's replica-parallel write sliced each array into one piece per replica, compiling a
    program for each (here 3 arrays x 8 replicas); on CPUs each is written whole instead, and
    restores as it was."""
    mesh = mesh_lib.data_mesh(jax.devices())
    assert mesh.size == 8
    state = jax.device_put({'a': jnp.arange(64.0).reshape(8, 8), 'b': jnp.arange(16.0),
                            'c': jnp.arange(96, dtype=jnp.int32).reshape(24, 4)},
                           mesh_lib.replicated(mesh))
    compiled = []
    listener = lambda event, seconds, **_: compiled.append(event) if 'backend_compile' in event \
        else None
    checkpoints = Checkpointer(str(tmp_path))
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        checkpoints.save(1, state)
        checkpoints.wait()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiled == []
    checkpoints.close()
    checkpoints = Checkpointer(str(tmp_path))
    restored = checkpoints.restore_latest(state)
    jax.tree.map(np.testing.assert_array_equal, restored, jax.device_get(state))
    checkpoints.close()


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
    assert re.search(r'checkpoint 3 in .* is damaged: its digest cannot be read .*; moved it to '
                     r'.*\.damaged/3 and trying the one before', caplog.text)
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


def test_arrays_that_differ_from_their_digest_are_moved_aside(tmp_path, caplog):
    like = save_three(tmp_path)
    digest_file = tmp_path / '3' / 'digest' / 'metadata'
    recorded = json.loads(digest_file.read_text())
    recorded['leaves'][0][3] = '0' * 64  # what a silently changed array file would give
    digest_file.write_text(json.dumps(recorded))
    checkpoints = Checkpointer(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        restored = checkpoints.restore_latest(like)
    np.testing.assert_array_equal(restored['w'], np.arange(4.0) * 2)
    assert checkpoints.verified_step == 2
    assert re.search(r"checkpoint 3 in .* is damaged: 1 of its 1 arrays differ from their digest "
                     r"\(\['w'\]\); moved it to .*\.damaged/3", caplog.text)
    assert sorted(os.listdir(tmp_path)) == ['1', '2']
    assert os.listdir(f'{tmp_path}.damaged') == ['3']
    checkpoints.save(3, {'w': like['w'] * 7})  # the step can be saved again
    checkpoints.wait()
    checkpoints.close()


def test_no_intact_checkpoint_stops_naming_each_and_why(tmp_path):
    like = save_three(tmp_path)
    for step in ('1', '2', '3'):
        for path in (tmp_path / step / 'digest').rglob('*'):
            if path.is_file():
                path.write_bytes(b'\x00garbage')
    checkpoints = Checkpointer(str(tmp_path))
    with pytest.raises(NoIntactCheckpointError,
                       match=r'no intact checkpoint in .*: 3 \(its digest cannot be read .*'
                             r'2 \(.*1 \(.*They were moved to .*\.damaged; run the same '
                             r'command to start this run from step 0'):
        checkpoints.restore_latest(like)
    checkpoints.close()


def test_a_checkpoint_of_another_state_is_a_config_mistake_not_damage(tmp_path):
    save_three(tmp_path)
    checkpoints = Checkpointer(str(tmp_path))
    with pytest.raises(CheckpointMismatchError,
                       match=r"checkpoint 3 in .* holds another state than this config builds: "
                             r"\['w'\] \[4\] float32 -> \[5\] float32; \['b'\] is not in it\. "
                             r"Resume with the config it was trained with"):
        checkpoints.restore_latest({'w': jnp.zeros(5), 'b': jnp.zeros(())})
    assert sorted(os.listdir(tmp_path)) == ['1', '2', '3']  # nothing moved
    checkpoints.close()


def test_a_checkpoint_from_before_digests_restores_with_a_warning(tmp_path, caplog):
    with ocp.StandardCheckpointer() as legacy:  # how deepgen wrote checkpoints before
        legacy.save(tmp_path / '5' / 'default', {'w': jnp.arange(4.0) * 5})
    (tmp_path / '5' / '_CHECKPOINT_METADATA').write_text('{}')
    checkpoints = Checkpointer(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        restored = checkpoints.restore_latest({'w': jnp.zeros(4)})
    np.testing.assert_array_equal(restored['w'], np.arange(4.0) * 5)
    assert 'checkpoint 5 in' in caplog.text and 'restoring it unverified' in caplog.text
    checkpoints.close()


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MiB tmpfs (root only; skipped where mounting is not allowed): a disk that fills."""
    mount = tmp_path / 'disk'
    mount.mkdir()
    done = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=12m', 'tmpfs', str(mount)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f'cannot mount a tmpfs here: {done.stderr.strip()}')
    try:
        yield mount
    finally:
        subprocess.run(['umount', '-l', str(mount)], check=True)


def test_a_full_disk_stops_before_the_save_and_keeps_the_previous_checkpoint(
        small_disk, mlp_gan, capsys):
    """The MLP GAN's state is about 7 MiB: its first checkpoint fits in 12 MiB, the second
    does not. The run stops before writing it; with more space the same run resumes."""
    pipeline = BatchPipeline({'image': np.zeros((64, 28, 28, 1), np.uint8)}, 16, seed=0)
    common = dict(workdir=str(small_disk / 'run'), init=lambda key: mlp_gan.fresh_state(),
                  step=mlp_gan.step, pipeline=pipeline, mesh=mesh_lib.data_mesh(jax.devices()[:1]))
    schedule = dict(steps=6, log_every=2, checkpoint_every=2)
    with pytest.raises(DiskFullError) as e:
        loop.train(schedule, **common)
    assert re.fullmatch(
        rf'not enough space on the device of {small_disk}/run/checkpoints for checkpoint 4: it '
        r'needs up to [\d.]+ MiB and [\d.]+ MiB are free; checkpoint 2 is intact and the run '
        r'resumes from it: free some space and run the same command again', str(e.value))
    assert sorted(os.listdir(small_disk / 'run' / 'checkpoints')) == ['2']
    subprocess.run(['mount', '-o', 'remount,size=64m', str(small_disk)], check=True)
    capsys.readouterr()
    state = loop.train(schedule, **common)
    assert 'resuming from the checkpoint at step 2' in capsys.readouterr().out  # verified
    assert int(state.step) == 6


def test_a_write_that_finds_the_disk_full_is_reported_as_such(small_disk, monkeypatch):
    """Where the space check cannot see it coming (another writer), orbax's failed write is
    translated; the checkpoint before it stays the latest, intact."""
    checkpoints = Checkpointer(str(small_disk / 'checkpoints'))
    checkpoints.save(1, {'w': jnp.zeros(256)})
    checkpoints.wait()
    monkeypatch.setattr(Checkpointer, '_check_space', lambda self, step, state: None)
    noise = jax.random.normal(jax.random.PRNGKey(0), (4 << 20,))  # 16 MiB that zstd keeps
    checkpoints.save(2, {'w': noise})
    with pytest.raises(DiskFullError, match=r'no space left on the device of .* while saving '
                                            r'checkpoint 2 .*; checkpoint 1 is intact'):
        checkpoints.wait()
    checkpoints.close()
    restored = Checkpointer(str(small_disk / 'checkpoints')).restore_latest({'w': jnp.zeros(256)})
    np.testing.assert_array_equal(restored['w'], np.zeros(256))


def test_ctrl_c_in_a_multi_process_run_joins_jaxs_preemption_sync(monkeypatch):
    """With several processes JAX listens for SIGTERM: a Ctrl-C sends this process one (the
    two-process run stops every process at one step; measured by hand: exit 130 and 143)."""
    sent = []
    monkeypatch.setattr(jax, 'process_count', lambda: 2)
    monkeypatch.setattr(os, 'kill', lambda pid, signum: sent.append((pid, signum)))
    monkeypatch.setattr(os, 'write', lambda fd, data: len(data))
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where pytest runs in the background
    preemption = loop._Preemption()
    try:
        assert signal.getsignal(signal.SIGTERM) is not preemption._handle  # JAX's, not ours
        preemption._handle(signal.SIGINT, None)
        assert preemption.signal == 'SIGINT' and sent == [(os.getpid(), signal.SIGTERM)]
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C: at once
            preemption._handle(signal.SIGINT, None)
    finally:
        preemption.close()
    assert signal.getsignal(signal.SIGINT) is before
