"""Multi-process runs on one machine: two processes of 4 CPU devices each (gloo collectives)
train the MLP GAN and end where one process with 8 devices does; only process 0 writes logs.
And the environment that asks for them is checked before anything starts."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO
from research.train import distributed

STEPS = 6
COMMAND = [sys.executable, '-m', 'experiments.gan_mnist',
           '--config=experiments/gan_mnist.py:smoke', '--config.model.arch=mlp',
           '--config.scores.at_end=False', '--config.export.num_samples=16',
           f'--config.train.steps={STEPS}']


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def devices_env(base, count, **extra):
    environment = dict(base, **extra)
    environment['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={count}'
    return environment


def final_state(workdir):
    """The state at the last step, restored onto one device whatever topology saved it."""
    checkpointer = ocp.StandardCheckpointer()
    path = os.path.abspath(workdir / 'checkpoints' / str(STEPS) / 'default')
    metadata = checkpointer.metadata(path)
    metadata = getattr(metadata, 'item_metadata', metadata)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          metadata)
    return jax.device_get(checkpointer.restore(path, target))


def test_two_processes_match_one_with_eight_devices(tiny_mnist_env, tmp_path):
    env = tiny_mnist_env
    port = free_port()
    launch = lambda workdir, environment: subprocess.Popen(
        [*COMMAND, '--workdir', str(workdir)], cwd=REPO, env=environment, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    processes = [launch(tmp_path / 'two', devices_env(
        env, 4, DEEPGEN_DISTRIBUTED='1', DEEPGEN_COORDINATOR=f'localhost:{port}',
        DEEPGEN_NUM_PROCESSES='2', DEEPGEN_PROCESS_ID=str(rank))) for rank in (0, 1)]
    processes.append(launch(tmp_path / 'one', devices_env(env, 8)))
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], '\n\n'.join(
        f'--- {name} ---\n{output[-3000:]}' for name, output in
        zip(('process 0 of 2', 'process 1 of 2', 'one process'), outputs))
    assert 'compiled the train step in' in outputs[0] and '(8 device(s)' in outputs[0]
    assert f'step {STEPS}/{STEPS}' in outputs[0] and f'step {STEPS}/{STEPS}' not in outputs[1]
    records = [json.loads(line) for line in (tmp_path / 'two' / 'metrics.jsonl').open()]
    assert [r['step'] for r in records] == [2, 4, 6]  # written once, by process 0
    two, one = final_state(tmp_path / 'two'), final_state(tmp_path / 'one')
    assert jax.tree.structure(two) == jax.tree.structure(one)
    np.testing.assert_array_equal(two['step'], one['step'])
    np.testing.assert_array_equal(two['rng'], one['rng'])
    # The gradient all-reduce adds in another order across processes: equal to float32 rounding.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), two, one)


@pytest.mark.parametrize('environ, message', [
    ({'DEEPGEN_DISTRIBUTED': 'yes'}, "DEEPGEN_DISTRIBUTED must be 1/true or 0/false, got 'yes'"),
    ({'DEEPGEN_COORDINATOR': 'h:1'},
     'DEEPGEN_COORDINATOR set but not DEEPGEN_NUM_PROCESSES, DEEPGEN_PROCESS_ID'),
    ({'DEEPGEN_COORDINATOR': 'h:1', 'DEEPGEN_NUM_PROCESSES': '2', 'DEEPGEN_PROCESS_ID': '2'},
     'need 0 <= DEEPGEN_PROCESS_ID < DEEPGEN_NUM_PROCESSES, got 2 and 2'),
    ({'DEEPGEN_COORDINATOR': 'h:1', 'DEEPGEN_NUM_PROCESSES': 'two', 'DEEPGEN_PROCESS_ID': '0'},
     "must be integers, got 'two' and '0'"),
])
def test_bad_cluster_settings_are_named(environ, message):
    with pytest.raises(ValueError, match=message.replace('(', r'\(')):
        distributed.requested(environ)
        distributed.cluster_args(environ)


def test_cluster_settings():
    assert not distributed.requested({}) and distributed.requested({'DEEPGEN_DISTRIBUTED': '1'})
    assert distributed.cluster_args({}) == {}  # auto-detection (TPU VMs, SLURM)
    assert distributed.cluster_args({'DEEPGEN_COORDINATOR': 'h:1', 'DEEPGEN_NUM_PROCESSES': '2',
                                     'DEEPGEN_PROCESS_ID': '1'}) == {
        'coordinator_address': 'h:1', 'num_processes': 2, 'process_id': 1}
