"""Bad input, across every experiment and command: one FATAL line that names the problem, the
exit status of research.errors, within 10 seconds of the command's start (before anything is
compiled), and a workdir that holds nothing new or changed.

Each row is a command line as a user would type it, run as a subprocess; two run at a time (each
spends most of its time importing jax, so the seconds are measured with the machine busy). The
bar was 5 s; on the 2-core AMD EPYC without AVX-512 (Zen 3), about 3x slower than the Intel Xeon
on this project's work, two rows took 5.2 and 5.8 s in a CI run on a quiet machine (2026-12-02).
A compile or a hang takes far longer than 10 s.
"""
import concurrent.futures
import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO

LIMIT_S = 10.0
GAN = ['-m', 'experiments.gan_mnist', '--config=experiments/gan_mnist.py:smoke']
MLP_GAN = GAN + ['--config.model.arch=mlp', '--config.scores.at_end=False',
                 '--config.export.num_samples=16']
VAE = ['-m', 'experiments.vae_mnist', '--config=experiments/vae_mnist.py:smoke']
DBN = ['-m', 'experiments.dbn_mnist', '--config=experiments/dbn_mnist.py:smoke']
LM = ['-m', 'experiments.char_lm', '--config=experiments/char_lm.py:smoke']
CLS = ['-m', 'experiments.classifier', '--config=experiments/classifier.py:smoke']
ROW = ['-m', 'experiments.rowwise_mnist', '--config=experiments/rowwise_mnist.py:smoke']
LSGAN = ['-m', 'experiments.proj.lsgan.lsgan_mnist',
         '--config=experiments/proj/lsgan/lsgan_mnist.py:smoke']
SCORE = ['-m', 'research.evals.score_samples']


@dataclasses.dataclass(frozen=True)
class Row:
    argv: tuple  # after `python`; {tmp}, {finished} and {holder} (the busy run) are filled in
    says: tuple  # what the FATAL line must contain
    status: int = 2
    workdir: str = 'fresh'  # fresh: --workdir {tmp}/ID, must not exist after; finished: the
    # finished run's workdir, unchanged after; busy: a running run's, its lock unchanged; ran:
    # a run that starts and fails, with no checkpoint; file: a file; none: no --workdir
    seconds: float = LIMIT_S


ROWS = {
    # gan_mnist: the table of the issue, row by row
    'gan-typo': Row((*GAN, '--config.train.stpes=3'),
                    ("unknown config key 'train.stpes' in --config.train.stpes=3",
                     'did you mean train.steps')),
    'gan-preset': Row(('-m', 'experiments.gan_mnist', '--config=experiments/gan_mnist.py:nope'),
                      ("unknown preset 'nope' for gan_mnist; presets: default, mlp, smoke",)),
    'gan-workdir-is-a-file': Row(GAN, ('is a file, not a directory',), workdir='file'),
    'gan-unwritable-workdir': Row((*GAN, '--workdir=/proc/deepgen-run'),
                                  ('cannot write to --workdir /proc/deepgen-run',),
                                  workdir='none'),
    'gan-changed-arch': Row((*MLP_GAN, '--config.model.arch=dcgan'),
                            ("changed: model.arch: 'mlp' -> 'dcgan'", 'another --workdir',
                             '(--config.model.arch=mlp)'), workdir='finished'),
    'gan-unknown-dataset': Row((*GAN, '--config.data.name=nope'),
                               ("unknown dataset data.name='nope'; datasets: mnist, "
                                'fashion_mnist, cifar10',)),
    'gan-missing-data-dir': Row((*GAN, '--config.data.data_dir={tmp}/nowhere'),
                                ('directory {tmp}/nowhere (named by the data_dir argument) does '
                                 'not exist',)),
    'gan-corrupt-idx': Row((*GAN, '--config.data.data_dir={tmp}/corrupt'),
                           ('{tmp}/corrupt/train-images-idx3-ubyte: bad magic',)),
    'gan-negative-steps': Row((*GAN, '--config.train.steps=-1'),
                              ('train.steps must be an integer >= 1, got -1',)),
    'gan-batch-over-devices': Row((*GAN, '--config.train.batch_size=12'),
                                  ('train.batch_size 12 must divide evenly over the 8 devices',)),
    'gan-unknown-loss': Row((*GAN, '--config.loss.kind=nope'),
                            ("unknown GAN loss 'nope'; known: non_saturating, hinge, "
                             'wasserstein',)),
    # Diverges at its first step: that takes a compile, so it gets longer; no checkpoint.
    'gan-lr-1e30': Row((*MLP_GAN, '--config.optim.lr_g=1e30', '--config.optim.lr_d=1e30'),
                       ('non-finite loss at step 1', 'no checkpoint was saved',
                        'Lower the learning rate'), status=1, workdir='ran', seconds=60),
    'gan-steps-abc': Row((*GAN, '--config.train.steps=abc'),
                         ("flag --config.train.steps=abc: invalid literal for int()",)),
    'gan-cifar10-without-a-judge': Row(
        (*GAN, '--config.data.name=cifar10'),
        ('no pinned judge scores cifar10 samples (judges: mnist, fashion_mnist)',
         '--config.scores.at_end=False --config.scores.every=0')),
    # The same command as a run still training on that workdir.
    'gan-double-launch': Row((*MLP_GAN, '--config.train.steps=100000'),
                             ('{tmp}/busy is in use by another run: process {holder} on host',),
                             workdir='busy'),
    'gan-conditional-mlp': Row(
        (*GAN, '--config.model.arch=mlp', '--config.model.conditional=True'),
        ('model.conditional=True needs model.arch=dcgan (the mlp GAN has no conditional form)',)),
    'gan-extra-argument': Row((*GAN, 'again'), ('unexpected arguments: again',)),
    'gan-unknown-flag': Row((*GAN, '--wrokdir=x'), ("Unknown command line flag 'wrokdir'",)),
    'gan-missing-config-file': Row(('-m', 'experiments.gan_mnist', '--config=experiments/no.py'),
                                   ("--config=experiments/no.py: no file 'experiments/no.py'",)),
    'gan-bad-source': Row((*GAN, '--config.data.source=web'),
                          ("unknown data source 'web'; sources: auto, dir, download, tfds, "
                           'embedded',)),
    'gan-profile-span': Row((*GAN, '--config.profile=20'),
                            ("profile='20': give START:STOP, two step numbers, e.g. 10:20",)),
    'gan-precision': Row((*GAN, '--config.train.precision=fp16'),
                         ("train.precision must be one of f32, bf16, got 'fp16'",)),
    # the other experiments
    'vae-typo': Row((*VAE, '--config.model.latnet=3'),
                    ("unknown config key 'model.latnet'", 'did you mean model.latent')),
    'vae-objective': Row((*VAE, '--config.objective.kind=nope'),
                         ("unknown VAE objective 'nope'; known:",)),
    'vae-eval-chunk': Row((*VAE, '--config.eval.k=15'),
                          ('eval.k (15) must be a multiple of eval.chunk (10)',)),
    'vae-cifar10-without-a-judge': Row((*VAE, '--config.data.name=cifar10'),
                                       ('no pinned judge scores cifar10 samples',)),
    'dbn-typo': Row((*DBN, '--config.rbm.lr_decy=none'),
                    ("unknown config key 'rbm.lr_decy'", 'did you mean rbm.lr_decay')),
    'dbn-dataset': Row((*DBN, '--config.data.name=cifar10'),
                       ('dbn_mnist trains binary RBMs on 28x28 grey images',)),
    'dbn-batch-over-devices': Row((*DBN, '--config.rbm.batch_size=12'),
                                  ('rbm.batch_size 12 must divide evenly over the 8 devices',)),
    'dbn-finetune-warmup': Row((*DBN, '--config.finetune.steps=1'),
                               ('need 0 <= finetune.warmup_steps < finetune.steps, got 1 and 1',)),
    'char-lm-typo': Row((*LM, '--config.model.widht=8'),
                        ("unknown config key 'model.widht'", 'did you mean model.width')),
    'char-lm-missing-corpus': Row((*LM, '--config.data.path={tmp}/missing.txt'),
                                  ("data.path '{tmp}/missing.txt' is not a file",)),
    'char-lm-heads': Row((*LM, '--config.model.width=15'),
                         ('model.width 15 must be a multiple of model.heads 2',)),
    'char-lm-warmup': Row((*LM, '--config.train.steps=1'),
                          ('need 0 <= optim.warmup_steps < train.steps, got 1 and 1',)),
    'classifier-typo': Row((*CLS, '--config.optim.lrr=1'),
                           ("unknown config key 'optim.lrr'", 'did you mean optim.lr')),
    'classifier-arch': Row((*CLS, '--config.model.arch=nope'),
                           ("unknown classifier architecture 'nope'",)),
    'classifier-export-needs-judge': Row((*CLS, '--config.model.arch=mlp'),
                                         ('export_judge needs model.arch=judge',)),
    'classifier-warmup': Row((*CLS, '--config.train.steps=1'),
                             ('need 0 <= optim.warmup_steps < train.steps, got 1 and 1',)),
    'rowwise-typo': Row((*ROW, '--config.model.hiden=3'),
                        ("unknown config key 'model.hiden'", 'did you mean model.hidden')),
    'rowwise-kind': Row((*ROW, '--config.model.kind=nope'), ("unknown model.kind 'nope'",)),
    'rowwise-warmup': Row((*ROW, '--config.train.steps=1'),
                          ('need 0 <= optim.warmup_steps < train.steps, got 1 and 1',)),
    'lsgan-typo': Row((*LSGAN, '--config.loss.knd=x'),
                      ("unknown config key 'loss.knd'", 'did you mean loss.kind')),
    # the commands
    'score-missing-file': Row((*SCORE, '{tmp}/none.npz', '--dataset', 'mnist'),
                              ('{tmp}/none.npz: cannot be read (No such file or directory)',),
                              workdir='none'),
    'score-not-npz': Row((*SCORE, '{tmp}/text.npz', '--dataset', 'mnist'),
                         ('{tmp}/text.npz: not an .npz archive',), workdir='none'),
    'score-no-images-key': Row((*SCORE, '{tmp}/other.npz', '--dataset', 'mnist'),
                               ("{tmp}/other.npz: no key 'images'; keys found: ['x']",),
                               workdir='none'),
    'score-unknown-dataset': Row((*SCORE, '{tmp}/other.npz', '--dataset', 'nope'),
                                 ("argument --dataset: invalid choice: 'nope'",), workdir='none'),
    'score-limit': Row((*SCORE, '{tmp}/other.npz', '--dataset', 'mnist', '--limit', '0'),
                       ('--limit must be positive, got 0',), workdir='none'),
    'report-missing-workdir': Row(('-m', 'research.report', '{tmp}/nowhere'),
                                  ('workdir {tmp}/nowhere does not exist',), workdir='none'),
    'report-bad-metrics': Row(('-m', 'research.report', '{tmp}/bad_run'),
                              ('{tmp}/bad_run/metrics.jsonl, line 1: not valid JSON',),
                              workdir='none'),
    'bench-unknown-model': Row(('-m', 'benchmarks.bench', 'nope'),
                               ("argument model: invalid choice: 'nope'",), workdir='none'),
    'bench-batch-zero': Row(('-m', 'benchmarks.bench', 'mlpgan', '--batch', '0'),
                            ('argument --batch: must be >= 1, got 0',), workdir='none'),
    'bench-scale-k': Row(('-m', 'benchmarks.bench_scale', 'fused', 'mlpgan', '--k', 'abc'),
                         ("argument --k: not an integer: 'abc'",), workdir='none'),
}


def snapshot(path):
    """{relative path: sha256} of every file under `path`."""
    found = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            with open(full, 'rb') as f:
                found[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return found


def prepare(tmp):
    """The files the rows name: a corrupt IDX directory, a text file, an .npz, a bad run."""
    from research.data import write_idx
    (tmp / 'corrupt').mkdir()
    (tmp / 'corrupt' / 'train-images-idx3-ubyte').write_bytes(os.urandom(3000))
    write_idx(tmp / 'corrupt' / 'train-labels-idx1-ubyte', np.zeros(10, np.uint8))
    (tmp / 'text.npz').write_text('not an archive')
    np.savez(tmp / 'other.npz', x=np.zeros(3))
    (tmp / 'bad_run').mkdir()
    (tmp / 'bad_run' / 'metrics.jsonl').write_text('{"step": 1,\n')
    (tmp / 'a_file').write_text('not a directory')


def run_row(name, row, tmp, finished, holder_pid, env):
    fill = lambda text: text.format(tmp=tmp, finished=finished, holder=holder_pid)
    argv = [fill(a) for a in row.argv]
    target = {'fresh': tmp / name, 'ran': tmp / name, 'file': tmp / 'a_file',
              'finished': finished, 'busy': tmp / 'busy', 'none': None}[row.workdir]
    if target is not None:
        argv.append(f'--workdir={target}')
    look = {'finished': lambda: snapshot(finished),
            'busy': lambda: (tmp / 'busy' / 'run.lock').read_text()}.get(row.workdir, dict)
    before = look()
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    seconds = time.perf_counter() - start
    after = look()
    return dict(done=done, seconds=seconds, says=[fill(s) for s in row.says], target=target,
                unchanged=before == after)


@pytest.fixture(scope='module')
def results(tmp_path_factory, tiny_mnist_env):
    tmp = tmp_path_factory.mktemp('bad_input')
    prepare(tmp)
    finished = tmp / 'finished'
    done = subprocess.run([sys.executable, *MLP_GAN, f'--workdir={finished}'], cwd=REPO,
                          env=tiny_mnist_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = dict(ROWS)
    double = rows.pop('gan-double-launch')
    busy = subprocess.Popen([sys.executable, *double.argv, f'--workdir={tmp / "busy"}'],
                            cwd=REPO, env=tiny_mnist_env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        for line in busy.stdout:  # training: it holds the lock
            if line.startswith('compiled the train step'):
                break
        found = {'gan-double-launch': run_row('gan-double-launch', double, tmp, finished,
                                              busy.pid, tiny_mnist_env)}
    finally:
        busy.send_signal(signal.SIGTERM)
        busy.communicate(timeout=120)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(run_row, name, row, tmp, finished, None,
                                     tiny_mnist_env) for name, row in rows.items()}
        found.update({name: future.result() for name, future in futures.items()})
    return found


@pytest.mark.parametrize('name', sorted(ROWS))
def test_bad_input_is_one_fatal_line_naming_it(results, name):
    row, result = ROWS[name], results[name]
    done = result['done']
    lines = done.stderr.strip().splitlines()
    assert done.returncode == row.status, done.stderr[-3000:]
    assert lines and lines[-1].startswith('FATAL '), done.stderr[-3000:]
    for phrase in result['says']:
        assert phrase in lines[-1], (phrase, lines[-1])
    assert 'Traceback' not in done.stderr + done.stdout
    assert result['seconds'] < row.seconds, result['seconds']
    if row.workdir == 'fresh':
        assert not result['target'].exists()  # not even an empty directory
    elif row.workdir in ('finished', 'busy'):
        assert result['unchanged']
    elif row.workdir == 'ran':
        assert not (result['target'] / 'checkpoints').exists() or not os.listdir(
            result['target'] / 'checkpoints')
    elif row.workdir == 'file':
        assert result['target'].read_text() == 'not a directory'


@pytest.mark.parametrize('name', ['gan_mnist', 'vae_mnist', 'dbn_mnist', 'char_lm', 'classifier',
                                  'rowwise_mnist', 'flow_mnist'])
def test_every_preset_passes_the_common_checks_on_8_devices(name):
    """What the table refuses for a user's value, no preset may ask for (1, 2, 4 or 8 devices:
    every *.batch_size divides over them)."""
    import importlib

    import jax

    from research.train import cli
    module = importlib.import_module(f'experiments.{name}')
    assert jax.device_count() == 8
    for preset in module.PRESETS:
        config = module.get_config(preset)
        cli.check_common(config)
        module.check_config(config)


def test_debug_shows_the_traceback_instead(tiny_mnist_env, tmp_path):
    done = subprocess.run([sys.executable, *GAN, '--config.train.steps=-1', '--debug',
                           f'--workdir={tmp_path / "run"}'], cwd=REPO, env=tiny_mnist_env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert 'Traceback' in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        'research.errors.ConfigError: train.steps must be an integer >= 1, got -1')
