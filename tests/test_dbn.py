"""Deep belief networks: the stack's passes up and down against hand-computed expectations, the
MLP it initialises (exactly the DBN's recognition pass), the layer step (exactly CD on the
up-passed, binarized batch; the same on 1 and 8 devices), the pictures, and the dbn_mnist
experiment end to end (smoke), its resumption and its refusals."""
import contextlib
import io
import itertools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import copy_tree, on_one_and_all_devices
from experiments import dbn_mnist
from research import data
from research.evals.rbm import filter_grid, pixel_grid
from research.models import dbn
from research.models.classifier import MLPClassifier, make_classifier
from research.objectives.dbn import make_layer_step
from research.objectives.rbm import init_rbm_state, make_cd_step
from test_rbm import random_rbm
from test_vae_experiment import offline_mnist

sigmoid = lambda x: 1 / (1 + np.exp(-x))


def stack(*sizes, seed=0, scale=0.3):
    return [random_rbm(v, h, seed=seed + i, scale=scale)
            for i, (v, h) in enumerate(zip(sizes, sizes[1:]))]


def test_check_layers_names_the_mismatch():
    with pytest.raises(ValueError, match='DBN layer 1 has 5 visible units but layer 0 has 4'):
        dbn.check_layers([random_rbm(6, 4), random_rbm(5, 3)])
    with pytest.raises(ValueError, match='at least one RBM layer'):
        dbn.check_layers([])


def test_up_pass_is_the_hidden_probabilities_layer_by_layer():
    layers = stack(6, 5, 4, 3)
    v = np.random.default_rng(0).random((7, 6)).astype(np.float32)
    x = v.astype(np.float64)
    for p in layers:
        x = sigmoid(np.asarray(p['b_h'], np.float64) + x @ np.asarray(p['w'], np.float64))
    np.testing.assert_allclose(dbn.up_pass(layers, jnp.asarray(v)), x, rtol=1e-5, atol=1e-6)


def test_classifier_params_make_the_mlp_compute_the_up_pass():
    # The MLP reads x in [-1, 1]; the DBN saw v = (x + 1) / 2: the first layer absorbs it.
    layers = stack(784, 20, 12, seed=3, scale=0.05)
    model = make_classifier('mlp', hidden=(20, 12), activation='sigmoid')
    images = np.random.default_rng(1).integers(0, 256, (5, 28, 28, 1)).astype(np.uint8)
    x = images.astype(np.float32) / 127.5 - 1.0
    init = model.init(jax.random.PRNGKey(0), jnp.asarray(x), train=False)['params']
    params = dbn.classifier_params(layers, init['head'])
    features = model.apply({'params': params}, jnp.asarray(x), method='features')
    expected = dbn.up_pass(layers, jnp.asarray(images.reshape(5, -1) / 255.0, jnp.float32))
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
    logits = model.apply({'params': params}, jnp.asarray(x), train=False)
    np.testing.assert_allclose(logits, expected @ init['head']['kernel'] + init['head']['bias'],
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="unknown MLP activation 'tanh'; known: relu, sigmoid"):
        make_classifier('mlp', activation='tanh')
    assert MLPClassifier().activation == 'relu'  # the default the judges' MLPs keep


def test_generate_down_pass_matches_enumeration():
    # A top RBM with no weights has independent visible units with p = sigmoid(b_v), whatever
    # the chain does; its hidden units sample p = sigmoid(b_h). Below it, pixels are the means
    # sigmoid(b_v0 + W0 h1) with h1 ~ p(h1 | h2) drawn from the top RBM's E[v | h2]. So the
    # mean picture is a sum over the 2^3 states of h1 (weighted by its exact probabilities).
    bottom, top = random_rbm(4, 3, seed=1), random_rbm(3, 2, seed=2)
    top = {**top, 'w': jnp.zeros((3, 2), jnp.float32)}
    pixels, snapshots = jax.jit(lambda layers: dbn.generate(
        layers, jax.random.PRNGKey(0), n=20_000, gibbs_steps=6, snapshot_every=2))([bottom, top])
    assert pixels.shape == (20_000, 4) and snapshots.shape == (3, 20_000, 4)
    p_h1 = sigmoid(np.asarray(top['b_v'], np.float64))
    expected = np.zeros(4)
    for h in itertools.product([0.0, 1.0], repeat=3):
        h = np.array(h)
        weight = np.prod(np.where(h == 1, p_h1, 1 - p_h1))
        expected += weight * sigmoid(np.asarray(bottom['b_v'], np.float64)
                                     + np.asarray(bottom['w'], np.float64) @ h)
    np.testing.assert_allclose(np.mean(pixels, axis=0), expected, atol=0.01)
    np.testing.assert_allclose(np.mean(snapshots[1], axis=0), expected, atol=0.01)


def test_generate_is_seeded_and_checks_its_arguments():
    layers = stack(6, 4, 3)
    run = jax.jit(lambda key: dbn.generate(layers, key, n=5, gibbs_steps=10, snapshot_every=5))
    a, b, c = run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(2))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    assert np.all((a[0] >= 0) & (a[0] <= 1))
    single, none = jax.jit(lambda key: dbn.generate(layers[:1], key, n=3, gibbs_steps=4))(
        jax.random.PRNGKey(0))
    assert none.shape == (0, 3, 6)
    assert single.shape == (3, 6)  # a one-layer DBN is an RBM: its visible means
    with pytest.raises(ValueError, match='gibbs_steps=10 must be a multiple of snapshot_every=3'):
        dbn.generate(layers, jax.random.PRNGKey(0), n=2, gibbs_steps=10, snapshot_every=3)


def test_layer_step_is_cd_on_the_binarized_up_pass():
    lower = stack(48, 10, seed=4, scale=0.3)
    params = random_rbm(10, 6, seed=6, scale=0.1)
    state = init_rbm_state(jax.random.PRNGKey(0), params, n_chains=8)
    state = state.replace(step=jnp.int32(5))
    images = np.random.default_rng(2).integers(0, 256, (8, 4, 4, 3)).astype(np.uint8)
    kwargs = dict(k=2, lr=0.05, momentum=0.5, weight_decay=1e-3)
    got, got_metrics = jax.jit(make_layer_step(lower, binarize=True, **kwargs))(
        copy_tree(state), {'image': jnp.asarray(images)})
    key = jax.random.fold_in(jax.random.fold_in(state.rng, 5), 1)
    v = jax.random.bernoulli(key, images.reshape(8, -1) / 255.0).astype(jnp.float32)
    want, want_metrics = jax.jit(make_cd_step(**kwargs))(
        copy_tree(state), {'v': dbn.up_pass(lower, v)})
    for name in ('w', 'b_v', 'b_h'):
        np.testing.assert_allclose(got.params[name], want.params[name], rtol=1e-6, atol=1e-7)
    assert float(got_metrics['recon_error']) == pytest.approx(float(want_metrics['recon_error']))
    # Without binarization the first layer sees the grey levels as they are.
    first = random_rbm(48, 6, seed=7, scale=0.1)
    state = init_rbm_state(jax.random.PRNGKey(1), first, n_chains=8)
    got = jax.jit(make_layer_step([], binarize=False, **kwargs))(
        copy_tree(state), {'image': jnp.asarray(images)})[0]
    want = jax.jit(make_cd_step(**kwargs))(
        copy_tree(state), {'v': jnp.asarray(images.reshape(8, -1) / 255.0, jnp.float32)})[0]
    np.testing.assert_allclose(got.params['w'], want.params['w'], rtol=1e-6, atol=1e-7)


def test_layer_step_is_the_same_on_one_and_eight_devices():
    lower = stack(48, 16, seed=8, scale=0.3)
    state = init_rbm_state(jax.random.PRNGKey(3), random_rbm(16, 8, seed=9, scale=0.1),
                           n_chains=16)
    step = make_layer_step(lower, binarize=True, k=1, persistent=True, lr=0.1, momentum=0.5)
    images = np.random.default_rng(3).integers(0, 256, (16, 4, 4, 3)).astype(np.uint8)
    results = on_one_and_all_devices(step, state, {'image': images})
    for name in ('w', 'b_v', 'b_h'):
        np.testing.assert_allclose(results[0].params[name], results[1].params[name],
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(results[0].chains, results[1].chains)


def test_pictures():
    w = np.zeros((784, 3), np.float32)
    w[0, 0], w[1, 0], w[5, 1] = 2.0, -1.0, 0.5  # unit 2 is all zeros
    grid = filter_grid(w, (28, 28, 1), count=3, columns=3)
    assert grid.shape == (2 + 30, 2 + 3 * 30, 1)
    tile = lambda i: grid[2:30, 2 + 30 * i:30 + 30 * i, 0]
    assert tile(0)[0, 0] == 255 and tile(0)[0, 1] == 64 and tile(0)[5, 5] == 128
    assert tile(1)[0, 5] == 255 and np.all(tile(2) == 128)
    with pytest.raises(ValueError, match=r'filters of 784 visible units cannot be \(32, 32, 3\)'):
        filter_grid(w, (32, 32, 3))
    pixels = pixel_grid(np.array([[0.0] * 783 + [1.0]] * 4), (28, 28, 1), columns=2)
    assert pixels.shape == (62, 62, 1) and pixels[29, 29, 0] == 255 and pixels[2, 2, 0] == 0


# The experiment, smoke preset, in process.

@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('dbn_smoke')
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as monkeypatch, contextlib.redirect_stdout(out):
        offline_mnist(monkeypatch)
        dbn_mnist.run(dbn_mnist.get_config('smoke'), str(workdir))
    return workdir, out.getvalue()


def test_smoke_run_leaves_its_outputs(smoke):
    workdir, output = smoke
    results = json.loads((workdir / 'results.json').read_text())
    assert results['evaluated_on'] == 'heldout' and results['test_examples'] == 200
    first, second = results['layers']
    assert (first['visible'], first['hidden'], second['visible'], second['hidden']) == (
        784, 32, 32, 16)
    for key in ('ais/log_z', 'ais/log_z_spread', 'heldout/log_likelihood',
                'train/log_likelihood', 'monitor/free_energy_gap'):
        assert np.isfinite(first[key]), key
    # Four steps from the training marginals barely move the RBM: its log-likelihood is the
    # base-rate model's (independent pixels at their training frequencies), computed here
    # apart from the run (measured: -210.42 against -210.31). A log Z of the wrong sign, the
    # train split, bits or a missing free energy would be tens to hundreds of nats away.
    config = dbn_mnist.get_config('smoke')
    train, test, _ = data.load_splits(config.data, config.seed)
    train_bin, test_bin = (data.binarize(split.images, [0, i]).reshape(len(split.images), -1)
                           / 255.0 for i, split in enumerate((train, test)))
    p = np.clip(train_bin.mean(0), 1e-3, 1 - 1e-3)
    base_rate = np.mean(test_bin @ np.log(p) + (1 - test_bin) @ np.log1p(-p))
    assert abs(first['heldout/log_likelihood'] - base_rate) < 1.0
    assert 'ais/log_z' not in second
    # The DBN's bound at every depth (research/evals/dbn_bound.py, checked exactly in
    # test_dbn_bound.py): of one layer it is the RBM's own log-likelihood, from the same log Z;
    # the second layer's has its own top RBM's log Z.
    assert first['heldout/dbn_bound'] == pytest.approx(first['heldout/log_likelihood'], abs=1e-3)
    assert first['heldout/dbn_is_log_likelihood'] == pytest.approx(first['heldout/dbn_bound'])
    assert first['dbn/log_z'] == first['ais/log_z'] and second['dbn/log_z'] != first['dbn/log_z']
    for key in ('dbn/log_z_spread', 'heldout/dbn_bound', 'heldout/dbn_bound_sem',
                'heldout/dbn_is_log_likelihood', 'heldout/dbn_is_log_likelihood_sem'):
        assert np.isfinite(second[key]), key
    # Up-down (smoke: 4 steps at a small rate) reports the whole DBN before and after, with
    # its own top RBM's log Z and the untied recognition weights; 4 steps barely move it
    # (measured: 0.01 nats), while a swapped or tied q, or a log Z of the wrong top RBM, would
    # be nats away. The pinned judge scored 40 samples of each model.
    updown = results['updown']
    assert updown['step'] == 4
    before, after = updown['before'], updown['after']
    assert before['heldout/dbn_bound'] == second['heldout/dbn_bound']
    assert after['dbn/log_z'] != before['dbn/log_z']
    assert abs(after['heldout/dbn_bound'] - before['heldout/dbn_bound']) < 0.5
    for values in (before, after):
        for key in ('scores/fid', 'scores/kid', 'scores/classifier_score'):
            assert np.isfinite(values[key]), key
    for file in ('samples.npz', 'samples_greedy.npz'):
        with np.load(workdir / file) as saved:
            assert saved['images'].shape == (40, 28, 28, 1) and saved['images'].dtype == np.uint8
    assert (workdir / 'updown' / 'metrics.jsonl').exists()
    # The accuracy is of the 200 heldout digits (a count / 200) and is the one the fine-tuning
    # logged; after 4 steps it is near chance (0.125 measured): the quality checks set bars.
    finetune = results['finetune']
    assert finetune['init'] == 'dbn'
    assert finetune['error'] == pytest.approx(1 - finetune['accuracy'])
    assert (200 * finetune['accuracy']) == pytest.approx(round(200 * finetune['accuracy']))
    logged = [json.loads(line) for line in (workdir / 'finetune' / 'metrics.jsonl').open()]
    assert logged[-1]['heldout/accuracy'] == finetune['accuracy']
    for path in ('filters.png', 'samples/layer_1_samples.png', 'samples/layer_2_chains.png',
                 'samples/updown_samples.png'):
        with Image.open(workdir / path) as image:
            assert image.mode == 'L' and min(image.size) > 100, path
    for phase in ('rbm_1', 'rbm_2', 'updown', 'finetune'):
        assert (workdir / phase / 'metrics.jsonl').exists(), phase
    assert re.search(r'RBM 1 \(784-32\): AIS log Z [\d.]+ \+- [\d.]+ \(3 std. errors, 8 runs, '
                     r'200 betas\); log-likelihood heldout -[\d.]+ nats', output)
    assert re.search(r'DBN 784-32-16: top RBM AIS log Z [\d.]+ \+- [\d.]+ \(3 std. errors, '
                     r'8 runs\); '
                     r'heldout variational bound -[\d.]+ \+- [\d.]+ nats, importance-sampled '
                     r'\(k=4\) -[\d.]+ \+- [\d.]+', output)
    assert re.search(r'after up-down: DBN 784-32-16: top RBM AIS log Z', output)
    assert re.search(r'before up-down, 40 samples \(10 sweeps\): FID [\d.]+, KID', output)
    assert re.search(r'final \(heldout, 200 examples\): fine-tuned accuracy [\d.]+', output)


def test_smoke_rerun_resumes_and_reproduces(smoke, capsys, monkeypatch):
    workdir, _ = smoke
    before = json.loads((workdir / 'results.json').read_text())
    offline_mnist(monkeypatch)
    dbn_mnist.run(dbn_mnist.get_config('smoke'), str(workdir))
    output = capsys.readouterr().out
    assert output.count('already trained 4 >= 4 steps') == 4  # 2 layers, up-down, fine-tuning
    assert 'compiled the train step' not in output
    assert json.loads((workdir / 'results.json').read_text()) == before


@pytest.mark.parametrize('overrides, message', [
    ({'data.name': 'cifar10'}, "data.name must be one of mnist, fashion_mnist, got 'cifar10'"),
    ({'finetune.init': 'none'}, "finetune.init must be 'dbn' or 'random', got 'none'"),
    ({'rbm.gibbs': 25}, 'rbm.gibbs must be a multiple of 10'),
    ({'dbn.hidden': (10, 0)}, 'dbn.hidden must list >= 1 positive layer sizes'),
    ({'finetune.generative': 'wake-sleep'},
     "finetune.generative must be 'none' or 'updown', got 'wake-sleep'"),
    ({'dbn.hidden': (10,)}, 'finetune.generative=updown fine-tunes a DBN of >= 2 layers'),
    ({'updown.k': 0}, 'up-down needs k >= 1 Gibbs sweeps in the top RBM, got k=0'),
    ({'updown.lr_decay': 'cosine'}, "rbm.lr_decay must be 'none' or 'linear', got 'cosine'"),
])
def test_bad_config_is_refused_before_the_workdir_is_written(overrides, message, tmp_path):
    config = dbn_mnist.get_config('smoke')
    for key, value in overrides.items():
        section, name = key.split('.')
        config[section][name] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        dbn_mnist.run(config, str(tmp_path))
    assert not (tmp_path / 'config.json').exists()


def test_a_greedy_run_scores_the_samples_of_the_stack_an_updown_run_starts_from(
        smoke, tmp_path, monkeypatch):
    workdir, _ = smoke
    offline_mnist(monkeypatch)
    config = dbn_mnist.get_config('smoke')
    config.finetune.generative, config.ais.runs = 'none', 0  # scores.n stays the smoke's 40
    with contextlib.redirect_stdout(io.StringIO()):
        dbn_mnist.run(config, str(tmp_path))
    # The same seeds train the same greedy stack, sampled with the same key: the updown run's
    # samples_greedy.npz, here the run's samples.npz, scored at the end of the top layer.
    with np.load(tmp_path / 'samples.npz') as mine, np.load(workdir / 'samples_greedy.npz') as up:
        np.testing.assert_array_equal(mine['images'], up['images'])
    logged = [json.loads(line) for line in (tmp_path / 'rbm_2' / 'metrics.jsonl').open()]
    before = json.loads((workdir / 'results.json').read_text())['updown']['before']
    assert logged[-1]['scores/fid'] == pytest.approx(before['scores/fid'], rel=1e-9)
    assert not any('scores/fid' in line for line in
                   (tmp_path / 'rbm_1' / 'metrics.jsonl').read_text().splitlines())


def test_random_init_baseline_skips_pretraining(tmp_path, monkeypatch, capsys):
    offline_mnist(monkeypatch)
    config = dbn_mnist.get_config('smoke')
    config.finetune.init, config.finetune.generative = 'random', 'none'
    dbn_mnist.run(config, str(tmp_path))
    results = json.loads((tmp_path / 'results.json').read_text())
    assert results['layers'] == [] and results['finetune']['init'] == 'random'
    assert not (tmp_path / 'rbm_1').exists() and not (tmp_path / 'filters.png').exists()
    assert 'from a random init, 4 steps' in capsys.readouterr().out
