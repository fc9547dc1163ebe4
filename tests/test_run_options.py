"""The options every experiment has (research.train.cli.run_options) and the compilation cache,
end to end: a GAN smoke run with --config.profile, --config.train.precision=bf16 and
--config.log.wandb (offline) leaves a trace of its train step, FLOP rates in its log and
metrics.jsonl, and a W&B run holding the same scalars as metrics.jsonl; a second run of the
same command in another workdir compiles nothing new (every program from the cache), and a
third in the first workdir resumes the first's W&B run; a fourth, with --config.init_from the
first, starts from its generator, its EMA and its discriminator."""
import glob
import json
import os
import struct
import subprocess
import sys

import jax
import pytest

from conftest import REPO
from research.errors import ConfigError, UserError
from research.train import compile_cache, tracking

MLP_GAN = ['-m', 'experiments.gan_mnist', '--config=experiments/gan_mnist.py:smoke',
           '--config.model.arch=mlp', '--config.scores.at_end=False',
           '--config.export.num_samples=16', '--config.profile=1:3',
           '--config.train.precision=bf16', '--config.log.wandb=deepgen-test']


def wandb_records(path):
    """The records of a W&B run file (workdir/wandb/offline-run-*/run-ID.wandb): LevelDB's log
    format (32 KiB blocks; each record a 7-byte header: CRC, length, type FULL/FIRST/MIDDLE/
    LAST) after a 7-byte ':W&B' header, each record a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2
    block = 32768
    with open(path, 'rb') as f:
        data = f.read()
    assert data[:4] == b':W&B'
    position, parts = 7, b''
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        length, kind = struct.unpack('<HB', data[position + 4:position + 7])
        chunk, position = data[position + 7:position + 7 + length], position + 7 + length
        if kind == 0 and length == 0:
            continue
        parts += chunk
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b''
            yield record


def wandb_run(workdir):
    """(history rows as {key: value}, config {key: value}) of the workdir's W&B runs."""
    rows, config = [], {}
    for path in sorted(glob.glob(os.path.join(workdir, 'wandb', 'offline-run-*', 'run-*.wandb'))):
        for record in wandb_records(path):
            kind = record.WhichOneof('record_type')
            if kind == 'history':
                rows.append({item.key or '/'.join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
            elif kind == 'run':
                config.update({u.key: json.loads(u.value_json) for u in record.run.config.update})
    return rows, config


def cache_entries(directory):
    return sorted(name for name in os.listdir(directory) if not name.endswith('-atime'))


@pytest.fixture(scope='module')
def runs(tiny_mnist_env, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('options')
    # every program cached, however long it took to compile, so that the listing does not
    # depend on how busy the machine was (at the default 0.1 s a small program can land on
    # either side of the threshold)
    env = {**tiny_mnist_env, 'DEEPGEN_CACHE_DIR': str(tmp / 'cache'), 'WANDB_MODE': 'offline',
           'WANDB_SILENT': 'true', 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
    out = {}
    for name, workdir in (('first', 'a'), ('second', 'b'), ('again', 'a')):
        done = subprocess.run([sys.executable, *MLP_GAN, f'--workdir={tmp / workdir}'], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        out[name] = done.stdout + done.stderr
        out[f'{name}_cache'] = cache_entries(tmp / 'cache')
    done = subprocess.run([sys.executable, *MLP_GAN, f'--workdir={tmp / "c"}',
                           f'--config.init_from={tmp / "a"}@4'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    out['init_from'] = done.stdout + done.stderr
    return tmp, out


def test_a_profile_of_the_train_step_is_written(runs):
    tmp, out = runs
    directory = tmp / 'a' / 'profile'
    assert f'profiled steps 2-3 into {directory}: tensorboard --logdir {directory}' in out['first']
    (trace,) = glob.glob(str(directory / 'plugins' / 'profile' / '*' / '*.xplane.pb'))
    with open(trace, 'rb') as f:
        assert b'jit_step' in f.read()


def test_the_log_and_metrics_carry_the_flop_rate(runs):
    tmp, out = runs
    assert ' GFLOP per step)' in out['first']  # on the "compiled the train step" line
    assert ' GFLOP/s | eta ' in out['first']
    with open(tmp / 'a' / 'metrics.jsonl') as f:
        logged = [r for r in map(json.loads, f) if 'd_loss' in r]
    assert [r['step'] for r in logged] == [2, 4]
    assert all(r['flops_per_s'] > 0 and 'mfu' not in r for r in logged)  # no peak for a CPU


def test_wandb_holds_what_metrics_jsonl_holds_and_the_config(runs):
    tmp, _ = runs
    with open(tmp / 'b' / 'metrics.jsonl') as f:
        logged = [json.loads(line) for line in f]
    rows, config = wandb_run(tmp / 'b')
    by_step = {}
    for row in rows:
        if 'step' in row:
            by_step.setdefault(row['step'], {}).update(row)
    for record in logged:
        for key, value in record.items():
            if key not in ('step', 'time'):
                assert by_step[record['step']][key] == pytest.approx(value, rel=1e-6), key
    pictures = [row['samples/path'] for row in rows if row.get('samples/_type') == 'image-file']
    assert len(pictures) == 2  # the sample grid at steps 2 and 4, as TensorBoard has it
    assert glob.glob(str(tmp / 'b' / 'wandb' / 'offline-run-*' / 'files' / pictures[0]))
    assert config['train']['precision'] == 'bf16' and config['profile'] == '1:3'


def test_the_same_command_again_compiles_nothing_new_and_resumes_its_wandb_run(runs):
    tmp, out = runs
    assert len(out['first_cache']) >= 3  # init, the train step, sampling...
    assert out['second_cache'] == out['first_cache']  # every program came from the cache
    assert out['again_cache'] == out['first_cache']
    with open(tmp / 'a' / 'wandb_id.txt') as f:
        run_id = f.read().strip()
    names = sorted(os.path.basename(p) for p in glob.glob(str(tmp / 'a' / 'wandb' / 'offline-*')))
    assert len(names) == 2 and all(name.endswith('-' + run_id) for name in names)
    with open(tmp / 'b' / 'wandb_id.txt') as f:
        assert f.read().strip() != run_id


@pytest.fixture
def jax_cache_config():
    """Restores the cache settings configure() changes in this process."""
    names = ('jax_enable_compilation_cache', 'jax_compilation_cache_dir',
             'jax_persistent_cache_min_compile_time_secs',
             'jax_persistent_cache_min_entry_size_bytes')
    saved = {name: getattr(jax.config, name) for name in names}
    yield
    for name, value in saved.items():
        jax.config.update(name, value)


def test_the_cache_directory_is_named_by_the_environment(tmp_path):
    assert compile_cache.cache_dir({'HOME': '/h'}) == os.path.join(
        os.path.expanduser('~'), '.cache', 'deepgen', 'jax')
    assert compile_cache.cache_dir({'XDG_CACHE_HOME': '/x'}) == '/x/deepgen/jax'
    assert compile_cache.cache_dir({'DEEPGEN_CACHE_DIR': str(tmp_path / 'c')}) == str(
        tmp_path / 'c')
    for off in ('off', 'OFF', '0', 'none', 'false'):
        assert compile_cache.cache_dir({'DEEPGEN_CACHE_DIR': off}) is None


def test_configure_turns_the_cache_on_off_or_names_an_unwritable_directory(
        tmp_path, jax_cache_config):
    directory = tmp_path / 'cache'
    assert compile_cache.configure({'DEEPGEN_CACHE_DIR': str(directory)}) == str(directory)
    assert directory.is_dir() and jax.config.jax_compilation_cache_dir == str(directory)
    assert jax.config.jax_enable_compilation_cache
    assert compile_cache.configure({'DEEPGEN_CACHE_DIR': 'off'}) is None
    assert not jax.config.jax_enable_compilation_cache
    with pytest.raises(UserError, match=r'DEEPGEN_CACHE_DIR=/proc/deepgen-cache: cannot write '
                                        r'there .*; name a writable directory, or '
                                        r'DEEPGEN_CACHE_DIR=off'):
        compile_cache.configure({'DEEPGEN_CACHE_DIR': '/proc/deepgen-cache'})
    # the default under an unwritable home: compile without a cache rather than stop
    assert compile_cache.configure({'XDG_CACHE_HOME': '/proc/deepgen-home'}) is None
    assert not jax.config.jax_enable_compilation_cache


def test_a_wandb_project_without_wandb_installed_is_named(monkeypatch):
    import importlib.util
    config = {'log': {'wandb': 'mine'}}
    tracking.check(config)  # installed here (the test extra)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'wandb' else real(name, *a))
    with pytest.raises(ConfigError, match=r"log.wandb='mine' needs the wandb package: pip "
                                          r"install -e '.\[wandb\]'"):
        tracking.check(config)
    tracking.check({'log': {'wandb': ''}})  # TensorBoard only: nothing needed


class FakeRun:
    """What tracking.session calls on a wandb run, recorded."""

    def __init__(self, **init):
        self.init, self.calls = init, []

    def define_metric(self, name, **options):
        self.calls.append(('define', name, options))

    def log(self, values):
        self.calls.append(('log', values))

    def finish(self, exit_code=0):
        self.calls.append(('finish', exit_code))


def test_each_loop_of_a_run_logs_under_its_subdirectory_against_its_own_step_axis(
        monkeypatch, tmp_path):
    import types
    import ml_collections
    import numpy as np
    from research.train.metrics import MetricWriter
    runs = []
    fake = types.SimpleNamespace(init=lambda **init: runs.append(FakeRun(**init)) or runs[-1],
                                 Image=lambda array: ('image', array.shape))
    monkeypatch.setitem(sys.modules, 'wandb', fake)
    config = ml_collections.ConfigDict({'log': {'wandb': 'proj'}, 'seed': 3})
    with tracking.session(config, str(tmp_path)):
        top, layer = MetricWriter(str(tmp_path)), MetricWriter(str(tmp_path / 'rbm_1'))
        layer.scalars(5, {'recon_error': 2.5})
        layer.image(5, 'filters', np.zeros((4, 6, 1), np.uint8))
        top.scalars(1, {'accuracy': 0.5})
        layer.close(), top.close()
    (run,) = runs
    assert run.init['project'] == 'proj' and run.init['config'] == {'log': {'wandb': 'proj'},
                                                                     'seed': 3}
    assert run.init['dir'] == str(tmp_path) and run.init['resume'] == 'allow'
    assert run.calls == [
        ('define', 'rbm_1/step', {'hidden': True}),
        ('define', 'rbm_1/recon_error', {'step_metric': 'rbm_1/step'}),
        ('log', {'rbm_1/recon_error': 2.5, 'rbm_1/step': 5}),
        ('define', 'rbm_1/filters', {'step_metric': 'rbm_1/step'}),
        ('log', {'rbm_1/filters': ('image', (4, 6, 1)), 'rbm_1/step': 5}),
        ('define', 'step', {'hidden': True}),
        ('define', 'accuracy', {'step_metric': 'step'}),
        ('log', {'accuracy': 0.5, 'step': 1}),
        ('finish', 0)]
    # a failure inside marks the W&B run failed, and the error goes on
    with pytest.raises(RuntimeError):
        with tracking.session(config, str(tmp_path)):
            raise RuntimeError('boom')
    assert runs[1].calls == [('finish', 1)] and runs[1].init['id'] == run.init['id']


def test_a_gan_run_starts_from_another_runs_networks(runs):
    tmp, out = runs
    assert f'init_from {tmp / "a"} at step 4: loaded ' in out['init_from']
    assert 'init_from: new in this model (as initialised): none' in out['init_from']
    with open(tmp / 'c' / 'init_from.json') as f:
        report = json.load(f)
    fields = {name.split('/')[0] for name in report['loaded']}
    assert fields == {'g_params', 'd_params', 'g_ema'} and report['skipped'] == []
