"""The DBN's variational bound and importance-sampled log p(v) against exact enumeration.

The references here are written directly from the definitions in float64 numpy, every state
of every layer enumerated (the top RBM's hidden units too), sharing no code with
research/evals/dbn_bound.py.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.evals import ais
from research.evals.dbn_bound import importance_log_likelihood, log_joint, variational_bound
from research.models.dbn import tied_recognition
from test_rbm import random_rbm


def states(n):
    return np.array(list(itertools.product([0.0, 1.0], repeat=n)))


def log_bernoulli(x, logits):
    """log prod_i Bernoulli(x_i; sigmoid(logits_i)) in float64, over the last axis."""
    return np.sum(x * logits - np.logaddexp(0.0, logits), axis=-1)


def logsumexp(a, axis=None):
    m = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def exact(layers, v, recognition=None):
    """(log p(v), E_q[log p(v, h)] + H(q), KL(q || p(h | v)), E_q[(p(h | v) / q(h | v))^2]) of
    one binary v by enumeration; the last, 1 + the variance of the importance weights over
    p(v), sets how fast the importance-sampled estimate settles: its std. error at k draws is
    about sqrt((that - 1) / k) nats."""
    f64 = [{k: np.asarray(x, np.float64) for k, x in p.items()} for p in layers]
    rec = [{k: np.asarray(x, np.float64) for k, x in p.items()}
           for p in (recognition or tied_recognition(layers))]
    top = f64[-1]
    tv, th = states(top['w'].shape[0]), states(top['w'].shape[1])
    energy = -(tv @ top['b_v'])[:, None] - (th @ top['b_h'])[None, :] - tv @ top['w'] @ th.T
    log_z = logsumexp(-energy)
    log_p_top = logsumexp(-energy, axis=1) - log_z  # log p(h_{L-1}) for each of its states
    if len(layers) == 1:  # an RBM: nothing to infer
        log_pv = log_p_top[int(np.dot(v, 2 ** np.arange(len(v))[::-1]))]
        return log_pv, log_pv, 0.0, 1.0
    hidden = [states(p['w'].shape[1]) for p in f64[:-1]]  # h_1 .. h_{L-1}
    log_p, log_q = [], []
    for combo in itertools.product(*[range(len(h)) for h in hidden]):
        chain = [v] + [hidden[l][i] for l, i in enumerate(combo)]
        lp = log_p_top[combo[-1]] + sum(
            log_bernoulli(chain[l], f64[l]['b_v'] + f64[l]['w'] @ chain[l + 1])
            for l in range(len(layers) - 1))
        lq = sum(log_bernoulli(chain[l + 1], rec[l]['b_h'] + chain[l] @ rec[l]['w'])
                 for l in range(len(rec)))
        log_p.append(lp)
        log_q.append(lq)
    log_p, log_q = np.array(log_p), np.array(log_q)
    log_pv, q = logsumexp(log_p), np.exp(log_q)
    bound = np.sum(q * (log_p - log_q))
    kl = np.sum(q * (log_q - (log_p - log_pv)))
    return log_pv, bound, kl, np.sum(np.exp(2 * (log_p - log_pv) - log_q))


def dbn(*sizes, seed=0, scale=1.0):
    return [random_rbm(a, b, seed=seed + i, scale=scale)
            for i, (a, b) in enumerate(zip(sizes, sizes[1:]))]


def log_z_of(layers):
    return float(ais.exact_log_partition(layers[-1]))


V = np.array([[1, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 0]], np.float32)


def test_the_enumerated_reference_is_a_distribution_with_the_identity_bound_plus_kl():
    """The reference itself: p(v) sums to 1 over all 2^6 images, and bound + KL = log p(v)."""
    layers = dbn(6, 4, 3, 2, seed=3)
    total = 0.0
    for v in states(6):
        log_pv, bound, kl, _ = exact(layers, v)
        total += np.exp(log_pv)
        assert kl > 0 and bound + kl == pytest.approx(log_pv, abs=1e-9)
    assert total == pytest.approx(1.0, abs=1e-9)


def test_one_layer_bound_is_the_rbm_log_likelihood_and_log_joint_is_exact():
    layers = dbn(6, 4, 3, seed=1)
    log_z = log_z_of(layers[:1])
    got = variational_bound(layers[:1], jnp.asarray(V), jax.random.PRNGKey(0), log_z)
    want = [exact(layers[:1], v)[0] for v in V]
    np.testing.assert_allclose(got, want, atol=1e-4)
    # log p*(v, h1) + log Z_top = log p(v, h1) of the two-layer DBN, for every h1
    log_z = log_z_of(layers)
    h1 = states(4)
    v = np.repeat(V[:1], len(h1), 0)
    joint = np.asarray(log_joint(layers, jnp.asarray(v), [jnp.asarray(h1, jnp.float32)])) - log_z
    top = {k: np.asarray(x, np.float64) for k, x in layers[1].items()}
    log_p_h1 = np.array([logsumexp(h @ top['b_v'] + states(3) @ top['b_h'] + h @ top['w'] @
                                   states(3).T) for h in h1]) - log_z
    low = {k: np.asarray(x, np.float64) for k, x in layers[0].items()}
    want = log_p_h1 + log_bernoulli(V[0], low['b_v'] + h1 @ low['w'].T)
    np.testing.assert_allclose(joint, want, atol=1e-4)


@pytest.mark.parametrize('sizes, seed', [((6, 4, 3), 2), ((6, 4, 3, 2), 5)])
def test_monte_carlo_bound_matches_the_enumerated_bound_below_log_p(sizes, seed):
    """The estimate, from 20,000 draws of q, is the exact bound within 0.05 nats, while the
    bound sits KL(q || p(h | v)) (here 1.8 to 3.3 nats) below log p(v): an estimate that forgot
    the entropy, a layer's term or log Z would be nats away."""
    layers = dbn(*sizes, seed=seed)
    got = variational_bound(layers, jnp.asarray(V), jax.random.PRNGKey(1), log_z_of(layers),
                            samples=20_000)
    for v, g in zip(V, np.asarray(got)):
        log_pv, bound, kl, _ = exact(layers, v)
        assert kl > 1.5
        assert g == pytest.approx(bound, abs=0.05)


def settled(estimate, log_pv, chi2, k, kl):
    """The importance-sampled estimate from k draws is log p(v) within 4 of its std. errors,
    a tolerance under a quarter of the bound's gap KL, so the bound itself would not pass."""
    tolerance = 4 * np.sqrt((chi2 - 1) / k)
    assert tolerance < kl / 4
    assert float(estimate) == pytest.approx(log_pv, abs=tolerance)


def test_importance_estimate_is_the_bound_at_k_1_and_log_p_at_large_k():
    layers = dbn(6, 4, 3, 2, seed=0)
    log_z, v = log_z_of(layers), jnp.asarray(V)
    # k = 1: log p*(v, h) - log q(h | v) for one draw, whose mean over draws is the bound
    one = jax.vmap(lambda key: importance_log_likelihood(layers, v, key, log_z, k=1))(
        jax.random.split(jax.random.PRNGKey(2), 20_000))
    many = importance_log_likelihood(layers, v, jax.random.PRNGKey(3), log_z, k=20_000)
    for i, x in enumerate(V):
        log_pv, bound, kl, chi2 = exact(layers, x)
        assert float(one[:, i].mean()) == pytest.approx(bound, abs=4 * float(
            one[:, i].std()) / np.sqrt(20_000))
        settled(many[i], log_pv, chi2, 20_000, kl)  # KL: 0.9 to 1.0 nats


def test_untied_recognition_weights_give_their_own_looser_bound():
    """q from weights other than the generative ones (as after up-down fine-tuning) is used as
    given: the estimate follows the enumerated bound of that q, and the IS estimate still
    finds log p(v)."""
    layers = dbn(6, 4, 3, 2, seed=0)
    other = tied_recognition(dbn(6, 4, 3, 2, seed=7, scale=0.5))
    log_z, v = log_z_of(layers), jnp.asarray(V)
    got = variational_bound(layers, v, jax.random.PRNGKey(4), log_z, samples=20_000,
                            recognition=other)
    is_k = importance_log_likelihood(layers, v, jax.random.PRNGKey(5), log_z, k=20_000,
                                     recognition=other)
    for i, x in enumerate(V):
        log_pv, bound, kl, chi2 = exact(layers, x, other)
        assert bound < exact(layers, x)[1]  # a q fit to another model is further from p(h | v)
        assert float(got[i]) == pytest.approx(bound, abs=0.05)
        settled(is_k[i], log_pv, chi2, 20_000, kl)


def test_bad_arguments_are_refused():
    layers, v, key = dbn(6, 4, 3, seed=0), jnp.asarray(V), jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match='a DBN of 2 layers has 1 recognition layers, got 2'):
        variational_bound(layers, v, key, 0.0, recognition=tied_recognition(dbn(6, 4, 3, 2)))
    with pytest.raises(ValueError, match=r'recognition layer 0 has weights \(6, 5\), the '
                                         r'generative layer \(6, 4\)'):
        variational_bound(layers, v, key, 0.0, recognition=tied_recognition(dbn(6, 5, 3)))
    with pytest.raises(ValueError, match='the bound needs samples >= 1, got 0'):
        variational_bound(layers, v, key, 0.0, samples=0)
    with pytest.raises(ValueError, match='needs k >= 1, got 0'):
        importance_log_likelihood(layers, v, key, 0.0, k=0)
