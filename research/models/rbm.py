"""Restricted Boltzmann machines as pure functions over a params dict.

An RBM is an energy over visible units v (V,) and binary hidden units h (H,), with parameters
{'w': (V, H), 'b_v': (V,), 'b_h': (H,)} in float32:

  Bernoulli visibles (binary v):     E(v, h) = -v.b_v - h.b_h - v W h
  Gaussian visibles (unit variance): E(v, h) = |v - b_v|^2 / 2 - h.b_h - v W h

Summing the hidden units out analytically gives the free energy F(v) = -log sum_h exp(-E(v, h)),
so p(v) = exp(-F(v)) / Z. The conditionals factorise: p(h_j = 1 | v) = sigmoid(b_h_j + (v W)_j),
and p(v | h) is Bernoulli(sigmoid(b_v + W h)) or N(b_v + W h, I). Sampling and contrastive
divergence are math over parameters, so there is no Flax module here: the same functions serve
the train step, annealed importance sampling and the stacked layers of a deep belief network.
"""
import jax
import jax.numpy as jnp

from research.numerics import softplus

VISIBLE_KINDS = ('bernoulli', 'gaussian')


def check_visible(visible: str) -> None:
    if visible not in VISIBLE_KINDS:
        raise ValueError(f'unknown RBM visible units {visible!r}; known: '
                         f'{", ".join(VISIBLE_KINDS)}')


def marginal_bias(p, eps: float = 1e-3):
    """log(p / (1 - p)) of the data's pixel marginals p, clipped to [eps, 1 - eps].

    Hinton's practical guide (2010, section 8) starts the visible biases here: an RBM with zero
    weights then reproduces the pixel marginals, and pixels that are never on get a large
    negative bias rather than -inf.
    """
    p = jnp.clip(jnp.asarray(p, jnp.float32), eps, 1.0 - eps)
    return jnp.log(p) - jnp.log1p(-p)


def init_rbm(key, visible: int, hidden: int, *, visible_bias=None) -> dict:
    """W ~ N(0, 0.01^2), zero hidden biases, visible biases zero or `visible_bias` (V,).

    Small random weights break the symmetry between hidden units without saturating them.
    """
    if visible < 1 or hidden < 1:
        raise ValueError(f'an RBM needs visible >= 1 and hidden >= 1, got {visible} x {hidden}')
    b_v = jnp.zeros((visible,), jnp.float32)
    if visible_bias is not None:
        b_v = jnp.asarray(visible_bias, jnp.float32)
        if b_v.shape != (visible,):
            raise ValueError(f'visible_bias must have shape ({visible},), got {b_v.shape}')
    return {'w': 0.01 * jax.random.normal(key, (visible, hidden), jnp.float32),
            'b_v': b_v, 'b_h': jnp.zeros((hidden,), jnp.float32)}


def hidden_input(params, v):
    """b_h + v W: (..., H)."""
    return params['b_h'] + v @ params['w']


def free_energy(params, v, *, visible: str = 'bernoulli'):
    """F(v) per example: (...,); Bernoulli -v.b_v, Gaussian |v - b_v|^2 / 2, minus
    sum_j softplus(b_h_j + (v W)_j) either way."""
    check_visible(visible)
    hidden_term = jnp.sum(softplus(hidden_input(params, v)), axis=-1)
    if visible == 'bernoulli':
        return -(v @ params['b_v']) - hidden_term
    return 0.5 * jnp.sum((v - params['b_v']) ** 2, axis=-1) - hidden_term


def hidden_probs(params, v):
    """p(h_j = 1 | v): (..., H)."""
    return jax.nn.sigmoid(hidden_input(params, v))


def visible_mean(params, h, visible: str = 'bernoulli'):
    """E[v | h]: sigmoid(b_v + W h) for Bernoulli visibles, b_v + W h for Gaussian ones."""
    check_visible(visible)
    pre = params['b_v'] + h @ params['w'].T
    return jax.nn.sigmoid(pre) if visible == 'bernoulli' else pre


def sample_hidden(params, v, key):
    """Binary h ~ p(h | v), float32."""
    return jax.random.bernoulli(key, hidden_probs(params, v)).astype(jnp.float32)


def sample_visible(params, h, key, visible: str = 'bernoulli'):
    """v ~ p(v | h): binary for Bernoulli visibles, mean + N(0, 1) noise for Gaussian ones."""
    return draw_visible(visible_mean(params, h, visible), key, visible)


def draw_visible(mean, key, visible: str = 'bernoulli'):
    """v ~ p(v | h) given its mean E[v | h]."""
    if visible == 'bernoulli':
        return jax.random.bernoulli(key, mean).astype(jnp.float32)
    return mean + jax.random.normal(key, mean.shape, mean.dtype)


def gibbs_step(params, v, key, visible: str = 'bernoulli'):
    """One block Gibbs sweep v -> h ~ p(h|v) -> v' ~ p(v|h); returns (v', h)."""
    k_h, k_v = jax.random.split(key)
    h = sample_hidden(params, v, k_h)
    return sample_visible(params, h, k_v, visible), h
