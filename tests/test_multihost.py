"""Multi-process runs on one machine, standing in for several hosts: two processes of 4 CPU
devices each (gloo collectives, coordinator on localhost).

  * Every experiment's smoke preset, with its end-of-run evaluations on, ends where one process
    with 8 devices does: every JSON result and every metrics.jsonl value within float32 rounding,
    the same files, each written once (by process 0).
  * SIGTERM to every process: both stop at the same step with status 143 and save it; the rerun
    ends bit-identical to an uninterrupted two-process run (the GAN runs all at once, sharing the
    two-process run between both checks).
  * SIGKILL of one process: the other exits within a bounded time (DEEPGEN_HEARTBEAT_TIMEOUT_S)
    naming the lost process; the rerun resumes from the last complete checkpoint.
And the environment that asks for several processes is checked before anything starts.
"""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO
from research.train import distributed

EXPERIMENTS = ('vae_mnist', 'dbn_mnist', 'classifier', 'char_lm', 'rowwise_mnist',
               'flow_mnist')  # + gan_mnist
WALL_CLOCK = {'time', 'examples_per_s', 'flops_per_s'}  # metrics.jsonl keys no two runs share
LONG_GAN = ['--config.model.arch=mlp', '--config.scores.at_end=False',
            '--config.train.log_every=10', '--config.train.sample_every=100000']
# The MLP GAN (the DCGAN's compile would double the time, for no other code), its end-of-run
# scores on, long enough for a SIGTERM to land mid-run.
GAN = ['--config.model.arch=mlp', '--config.train.steps=60', '--config.train.log_every=10',
       '--config.train.checkpoint_every=60', '--config.train.sample_every=30']
EXPECTED = {'gan_mnist': {'scores/fid', 'scores/classifier_score'},
            'vae_mnist': {'test/elbo', 'test/nll', 'scores/fid'},
            'dbn_mnist': {'ais/log_z', 'test/log_likelihood', 'test/accuracy'},
            'classifier': {'test/accuracy', 'test/macro_f1'},
            'char_lm': {'val/bits_per_char'},
            'rowwise_mnist': {'test/accuracy', 'test/macro_f1'},
            'flow_mnist': {'scores/fid', 'scores/classifier_score'}}  # its evaluations' metrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def devices_env(base, count, **extra):
    """`base` for a process of `count` CPU devices, compiling with JAX's
    jax_disable_most_optimizations (XLA's backend at O0): these runs compare topologies, both
    compiled alike, and their programs are small, so compiling is most of their time; at O0
    the flow and DBN comparisons took 45 and 36 s instead of 64 and 57."""
    environment = dict(base, **extra)
    environment['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={count}'
    environment['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '1'
    return environment


def command(experiment, workdir, *overrides):
    return [sys.executable, '-m', f'experiments.{experiment}',
            f'--config=experiments/{experiment}.py:smoke', '--workdir', str(workdir), *overrides]


def start(argv, environment, log):
    return subprocess.Popen(argv, cwd=REPO, env=environment, stdout=open(log, 'w'),
                            stderr=subprocess.STDOUT)


def start_two(argv, base, logs, port=None, **extra):
    """Processes 0 and 1 of a two-process run, 4 CPU devices each."""
    port = port or free_port()
    return [start(argv, devices_env(base, 4, DEEPGEN_DISTRIBUTED='1',
                                    DEEPGEN_COORDINATOR=f'localhost:{port}',
                                    DEEPGEN_NUM_PROCESSES='2', DEEPGEN_PROCESS_ID=str(rank),
                                    **extra), log) for rank, log in zip((0, 1), logs)]


def finish(processes, logs, timeout=300):
    codes = [p.wait(timeout=timeout) for p in processes]
    return codes, [open(log).read() for log in logs]


def explain(outputs):
    return '\n\n'.join(f'--- process {i} ---\n{output[-3000:]}' for i, output in
                       enumerate(outputs))


def run_files(root):
    """Every file a run wrote but its checkpoints, by path (TensorBoard event files by folder,
    since their names hold a time and a pid)."""
    found = {}
    for directory, _, names in os.walk(root):
        if 'checkpoints' in os.path.relpath(directory, root).split(os.sep):
            continue
        for name in names:
            relative = os.path.relpath(os.path.join(directory, name), root)
            key = os.path.dirname(relative) if 'tfevents' in name else relative
            assert key not in found, f'two TensorBoard event files in {key}: written twice'
            found[key] = os.path.join(directory, name)
    return found


def assert_close(a, b, where):
    """JSON values: floats to float32 rounding, everything else equal (but content hashes)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            if not key.endswith('sha256'):  # a judge's weights hash: equal only to rounding
                assert_close(a[key], b[key], f'{where}.{key}')
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f'{where}[{i}]')
    elif isinstance(a, float):
        assert np.isclose(a, b, rtol=1e-4, atol=1e-5), f'{where}: {a} vs {b}'
    else:
        assert a == b, f'{where}: {a!r} vs {b!r}'


def records(path):
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK}
            for line in open(path)]


def final_state(workdir, step):
    """The state at `step`, restored onto one device whatever topology saved it."""
    checkpointer = ocp.StandardCheckpointer()
    path = os.path.abspath(os.path.join(workdir, 'checkpoints', str(step), 'state'))
    metadata = checkpointer.metadata(path)
    metadata = getattr(metadata, 'item_metadata', metadata)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          metadata)
    return jax.device_get(checkpointer.restore(path, target))


def wait_for(log, text, processes, timeout=120):
    deadline = time.monotonic() + timeout
    while text not in open(log).read():
        assert all(p.poll() is None for p in processes), f'a process ended before {text!r}'
        assert time.monotonic() < deadline, f'no {text!r} in {log} within {timeout} s'
        time.sleep(0.1)


def assert_same_run(experiment, two, one, outputs):
    """Two processes' run (workdir `two`, process logs `outputs`) against one process's (`one`)."""
    assert '(8 device(s)' in outputs[0] and 'process 1 of 2, 4 local of 8 devices' in outputs[1]
    assert '\ndone: ' in outputs[0] and '\ndone: ' not in outputs[1]  # process 0 talks
    two, one = run_files(two), run_files(one)
    assert sorted(two) == sorted(one)
    for name in one:
        if name.endswith('.jsonl'):
            assert_close(records(two[name]), records(one[name]), name)
        elif name.endswith('.json') and not name.endswith('run_info.json'):
            assert_close(json.load(open(two[name])), json.load(open(one[name])), name)
    # The evaluations ran: their numbers are among the compared records.
    logged = {key for name in one if name.endswith('.jsonl') for r in records(one[name])
              for key in r}
    assert EXPECTED[experiment] <= logged, sorted(logged)


@pytest.mark.parametrize('experiment', EXPERIMENTS)
def test_two_processes_match_one_with_eight_devices(experiment, tiny_mnist_env, tmp_path):
    logs = [tmp_path / f'{name}.log' for name in ('p0', 'p1', 'one')]
    processes = start_two(command(experiment, tmp_path / 'two'), tiny_mnist_env, logs[:2])
    processes.append(start(command(experiment, tmp_path / 'one'),
                           devices_env(tiny_mnist_env, 8), logs[2]))
    codes, outputs = finish(processes, logs)
    assert codes == [0, 0, 0], explain(outputs)
    assert_same_run(experiment, tmp_path / 'two', tmp_path / 'one', outputs)


@pytest.fixture(scope='module')
def gan_runs(tiny_mnist_env, tmp_path_factory):
    """The GAN three ways at once: two processes, one of 8 devices, and two processes that get a
    SIGTERM each at a random step and are then rerun. Returns (root, logs, trigger, outputs of
    the interrupted processes)."""
    root = tmp_path_factory.mktemp('gan_runs')
    logs = {name: [root / f'{name}_{i}.log' for i in (0, 1)] for name in ('two', 'cut', 'one')}
    argv = lambda name: command('gan_mnist', root / name, *GAN)
    two = start_two(argv('two'), tiny_mnist_env, logs['two'])
    one = [start(argv('one'), devices_env(tiny_mnist_env, 8), logs['one'][0])]
    cut = start_two(argv('cut'), tiny_mnist_env, logs['cut'])
    trigger = random.choice((10, 20, 30))
    wait_for(logs['cut'][0], f'step {trigger}/60', cut)
    for p in cut:
        p.send_signal(signal.SIGTERM)
    codes, interrupted = finish(cut, logs['cut'])
    assert codes == [143, 143], explain(interrupted)
    shutil.copytree(root / 'cut', root / 'cut_at_sigterm')
    resumed = start_two(argv('cut'), tiny_mnist_env, logs['cut'])
    codes, outputs = finish(two + one + resumed, logs['two'] + logs['one'][:1] + logs['cut'])
    assert codes == [0] * 5, explain(outputs)
    return root, logs, trigger, interrupted


def test_two_gan_processes_match_one_with_eight_devices(gan_runs):
    root, logs, _, _ = gan_runs
    outputs = [open(log).read() for log in logs['two']]
    assert_same_run('gan_mnist', root / 'two', root / 'one', outputs)


def test_sigterm_to_every_process_saves_one_step_and_resumes_bit_identical(gan_runs):
    root, logs, trigger, outputs = gan_runs
    # Both reach JAX's preemption sync point at the same step, and save that step together.
    synced = [{int(line.split('step=')[1]) for line in o.splitlines()
               if 'Reached preemption sync point, step=' in line} for o in outputs]
    assert len(synced[0]) == 1 and synced[0] == synced[1], synced
    stopped = synced[0].pop()
    assert f'preempted (SIGTERM) at step {stopped} of 60: saved a checkpoint' in outputs[0]
    saved = sorted(int(n) for n in os.listdir(root / 'cut_at_sigterm' / 'checkpoints')
                   if n.isdigit())
    assert saved == [stopped] and trigger <= stopped < 60
    assert f'resuming from the checkpoint at step {stopped}' in open(logs['cut'][0]).read()
    a, b = final_state(root / 'cut', 60), final_state(root / 'two', 60)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    # What the rerun logged over whole windows after the stop (and its scores) is what the
    # uninterrupted run logged.
    late = lambda workdir: [r for r in records(workdir / 'metrics.jsonl') if r['step'] >= 50]
    assert late(root / 'cut') == late(root / 'two') and len(late(root / 'two')) == 3


def test_sigkill_of_one_process_stops_the_other_naming_it(tiny_mnist_env, tmp_path):
    heartbeat = 5
    argv = command('gan_mnist', tmp_path / 'run', *LONG_GAN, '--config.train.steps=60',
                   '--config.train.checkpoint_every=10')
    logs = [tmp_path / 'p0.log', tmp_path / 'p1.log']
    processes = start_two(argv, tiny_mnist_env, logs, DEEPGEN_HEARTBEAT_TIMEOUT_S=str(heartbeat))
    wait_for(logs[0], 'step 30/60', processes)
    processes[1].kill()
    t0 = time.monotonic()
    code = processes[0].wait(timeout=120)
    took = time.monotonic() - t0
    output = open(logs[0]).read()
    assert code != 0 and took < heartbeat + 20, (code, took, output[-3000:])
    # JAX's distributed service names the silent process; the FATAL line above it comes when a
    # collective fails first (it may not: the heartbeat can run out before any collective does).
    assert 'The following tasks are unhealthy (stopped sending heartbeats):\n1' in output, \
        output[-3000:]
    complete = max(int(n) for n in os.listdir(tmp_path / 'run' / 'checkpoints') if n.isdigit())
    assert complete >= 20
    processes = start_two(argv, tiny_mnist_env, logs)
    codes, outputs = finish(processes, logs)
    assert codes == [0, 0], explain(outputs)
    assert f'resuming from the checkpoint at step {complete}' in outputs[0]
    assert 'step 60/60' in outputs[0]


@pytest.mark.parametrize('environ, message', [
    ({'DEEPGEN_DISTRIBUTED': 'yes'}, "DEEPGEN_DISTRIBUTED must be 1/true or 0/false, got 'yes'"),
    ({'DEEPGEN_COORDINATOR': 'h:1'},
     'DEEPGEN_COORDINATOR set but not DEEPGEN_NUM_PROCESSES, DEEPGEN_PROCESS_ID'),
    ({'DEEPGEN_COORDINATOR': 'h:1', 'DEEPGEN_NUM_PROCESSES': '2', 'DEEPGEN_PROCESS_ID': '2'},
     'need 0 <= DEEPGEN_PROCESS_ID < DEEPGEN_NUM_PROCESSES, got 2 and 2'),
    ({'DEEPGEN_COORDINATOR': 'h:1', 'DEEPGEN_NUM_PROCESSES': 'two', 'DEEPGEN_PROCESS_ID': '0'},
     "must be integers, got 'two' and '0'"),
    ({'DEEPGEN_HEARTBEAT_TIMEOUT_S': '0'},
     "DEEPGEN_HEARTBEAT_TIMEOUT_S must be a whole number of seconds >= 1, got '0'"),
])
def test_bad_cluster_settings_are_named(environ, message):
    with pytest.raises(ValueError, match=message.replace('(', r'\(')):
        distributed.requested(environ)
        distributed.cluster_args(environ)
        distributed.heartbeat_timeout(environ)


def test_cluster_settings():
    assert not distributed.requested({}) and distributed.requested({'DEEPGEN_DISTRIBUTED': '1'})
    assert distributed.cluster_args({}) == {}  # auto-detection (TPU VMs, SLURM)
    assert distributed.cluster_args({'DEEPGEN_COORDINATOR': 'h:1', 'DEEPGEN_NUM_PROCESSES': '2',
                                     'DEEPGEN_PROCESS_ID': '1'}) == {
        'coordinator_address': 'h:1', 'num_processes': 2, 'process_id': 1}
    assert distributed.heartbeat_timeout({}) == 100  # JAX's default
    assert distributed.heartbeat_timeout({'DEEPGEN_HEARTBEAT_TIMEOUT_S': '7'}) == 7
