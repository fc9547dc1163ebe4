"""Up-down fine-tuning: its wake and sleep gradients exactly, and its step as a train step."""
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import copy_tree, on_one_and_all_devices
from research.models.dbn import log_directed, log_recognition, sample_down, sample_up
from research.objectives.rbm import cd_gradient, run_chains
from research.objectives.updown import (generative_layers, init_updown_state, make_updown_step,
                                        sleep_gradient, wake_gradient)
from test_dbn_bound import V, dbn, exact, states

sigmoid = lambda x: 1 / (1 + np.exp(-x))


def f64(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def test_wake_and_sleep_gradients_are_the_delta_rule_at_the_given_states():
    """Hinton et al. (2006), appendix B, written out: the generative weights move by
    h_{l+1} (h_l - p(h_l | h_{l+1})), the recognition weights by h_l (h_{l+1} - q(h_{l+1} |
    h_l)), each averaged over the batch."""
    state = init_updown_state(jax.random.PRNGKey(0), dbn(6, 4, 3, 2, seed=1))
    gen, rec = state.params['generative'], state.params['recognition']
    rng = np.random.default_rng(0)
    chain = [jnp.asarray(rng.integers(0, 2, (5, n)), jnp.float32) for n in (6, 4, 3)]
    c = [np.asarray(x, np.float64) for x in chain]
    wake, sleep = wake_gradient(gen, chain), sleep_gradient(rec, chain)
    for l, (g, r) in enumerate(zip(f64(gen), f64(rec))):
        error = c[l] - sigmoid(g['b_v'] + c[l + 1] @ g['w'].T)
        np.testing.assert_allclose(wake[l]['w'], error.T @ c[l + 1] / 5, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(wake[l]['b_v'], error.mean(0), rtol=1e-5, atol=1e-6)
        error = c[l + 1] - sigmoid(r['b_h'] + c[l] @ r['w'])
        np.testing.assert_allclose(sleep[l]['w'], c[l].T @ error / 5, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sleep[l]['b_h'], error.mean(0), rtol=1e-5, atol=1e-6)


def test_expected_wake_gradient_is_the_gradient_of_the_variational_bound():
    """Over every h ~ q(h | v) of a tiny 3-layer DBN, weighted by q, the wake gradient equals
    the bound's own gradient in the generative weights, from central differences of the
    enumerated bound (float64): the wake phase climbs the bound."""
    layers = dbn(6, 4, 3, 2, seed=0)
    state = init_updown_state(jax.random.PRNGKey(0), layers)
    gen, rec = state.params['generative'], state.params['recognition']
    h1, h2 = states(4), states(3)
    pairs = np.array([np.concatenate([a, b]) for a, b in itertools.product(h1, h2)])
    v = np.repeat(V[:1].astype(np.float64), len(pairs), 0)
    chain = [jnp.asarray(x, jnp.float32) for x in (v, pairs[:, :4], pairs[:, 4:])]
    q = np.exp(np.asarray(log_recognition(rec, chain), np.float64))
    assert q.sum() == pytest.approx(1.0, abs=1e-5)
    per_state = jax.vmap(lambda *c: wake_gradient(gen, [x[None] for x in c]))(*chain)
    expected = jax.tree.map(lambda g: np.tensordot(q, np.asarray(g, np.float64), 1), per_state)

    def bound(l, name, index, delta):
        moved = [dict(p) for p in layers]
        w = np.array(moved[l][name], np.float64)
        w[index] += delta
        moved[l][name] = w
        return exact(moved, V[0], [f64(r) for r in rec])[1]

    for l, name, index in [(0, 'w', (2, 1)), (0, 'b_v', 4), (1, 'w', (0, 2)), (1, 'b_v', 3)]:
        numeric = (bound(l, name, index, 1e-5) - bound(l, name, index, -1e-5)) / 2e-5
        assert expected[l][name][index] == pytest.approx(numeric, rel=1e-4, abs=1e-6)
        assert abs(numeric) > 1e-2  # a gradient worth checking


def test_step_is_up_cd_down_and_updates_each_part():
    """The step against the same computation spelled out here, key for key."""
    layers = dbn(48, 10, 8, 6, seed=2, scale=0.3)
    state = init_updown_state(jax.random.PRNGKey(1), layers).replace(step=jnp.int32(3))
    images = np.random.default_rng(4).integers(0, 256, (8, 4, 4, 3)).astype(np.uint8)
    chex.clear_trace_counter()
    step = jax.jit(chex.assert_max_traces(make_updown_step(k=2, lr=0.1, momentum=0.5,
                                                           weight_decay=1e-3), n=1))
    got, metrics = step(copy_tree(state), {'image': jnp.asarray(images)})
    again, _ = step(copy_tree(state), {'image': jnp.asarray(images)})  # no second trace
    chex.assert_trees_all_equal(got.params, again.params)
    p = state.params
    k_bin, k_up, k_top, k_down = jax.random.split(jax.random.fold_in(state.rng, 3), 4)
    v = jax.random.bernoulli(k_bin, images.reshape(8, -1) / 255.0).astype(jnp.float32)
    wake, _ = sample_up(p['recognition'], v, k_up)
    neg = run_chains(p['top'], wake[-1], k_top, 2, 'bernoulli')
    sleep = sample_down(p['generative'], neg, k_down)
    np.testing.assert_array_equal(sleep[-1], neg)
    sig = jax.nn.sigmoid
    grads = {'generative': wake_gradient(p['generative'], wake),
             'recognition': sleep_gradient(p['recognition'], sleep),
             'top': cd_gradient(wake[-1], sig(p['top']['b_h'] + wake[-1] @ p['top']['w']), neg,
                                sig(p['top']['b_h'] + neg @ p['top']['w']))}
    for part in grads:
        for path, g in jax.tree_util.tree_leaves_with_path(grads[part]):
            name = path[-1].key
            old = p[part]
            for entry in path:
                old = old[entry.key if hasattr(entry, 'key') else entry.idx]
            if name == 'w':
                g = g - 1e-3 * old
            new = got.params[part]
            for entry in path:
                new = new[entry.key if hasattr(entry, 'key') else entry.idx]
            np.testing.assert_allclose(new, old + 0.1 * g, rtol=1e-5, atol=1e-6)
            assert float(jnp.abs(g).max()) > 0, (part, path)
    assert float(metrics['wake_log_p']) == pytest.approx(float(jnp.mean(log_directed(
        p['generative'][:1], wake[:2]))))
    assert float(metrics['sleep_log_q']) == pytest.approx(float(jnp.mean(log_recognition(
        p['recognition'], sleep))))
    # The fine-tuned model reads as a DBN: generative layers, then the top RBM.
    assert [x['w'].shape for x in generative_layers(got.params)] == [(48, 10), (10, 8), (8, 6)]


def test_step_is_the_same_on_one_and_eight_devices():
    state = init_updown_state(jax.random.PRNGKey(3), dbn(48, 16, 8, seed=9, scale=0.3))
    step = make_updown_step(k=1, lr=0.1, momentum=0.5)
    images = np.random.default_rng(3).integers(0, 256, (16, 4, 4, 3)).astype(np.uint8)
    one, eight = on_one_and_all_devices(step, state, {'image': images})
    chex.assert_trees_all_close(one.params, eight.params, rtol=1e-5, atol=1e-6)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match='needs a DBN of at least 2 layers'):
        init_updown_state(jax.random.PRNGKey(0), dbn(6, 4))
    with pytest.raises(ValueError, match='k >= 1 Gibbs sweeps in the top RBM, got k=0'):
        make_updown_step(k=0, lr=0.1)
    with pytest.raises(ValueError, match='lr must be > 0, got 0'):
        make_updown_step(k=1, lr=0)
