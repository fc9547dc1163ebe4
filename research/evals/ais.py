"""The partition function of a Bernoulli-Bernoulli RBM: exact for few hidden units, else AIS.

log p(v) = -F(v) - log Z needs Z = sum_v exp(-F(v)), a sum over 2^V images.

  * `exact_log_partition`: with the visible units summed out instead,
    log Z = logsumexp_h [h.b_h + sum_i softplus(b_v_i + (W h)_i)], a sum over 2^H hidden states:
    exact, and feasible up to H ~ 20-25. Chunked so memory stays at one chunk of states.
  * `ais_log_partition`: annealed importance sampling (Neal 2001) as Salakhutdinov & Murray (2008)
    apply it to RBMs. From a base model A with zero weights, visible biases b_A and H hidden
    units with zero parameters, whose log Z_A = sum_i softplus(b_A_i) + H log 2 is known, to the
    RBM B through the distributions (hidden units summed out analytically)

      p*_k(v) = exp((1 - beta_k) v.b_A + beta_k v.b_B) * prod_j (1 + exp(beta_k (b_h_j + (v W)_j)))

    for 0 = beta_0 < ... < beta_K = 1. Each run starts from an exact sample of A, multiplies its
    weight by p*_k(v) / p*_{k-1}(v), then moves v by one Gibbs sweep that leaves p_k invariant.
    Z_B / Z_A = E[w], so log Z_B ~= log Z_A + log mean w. By Jensen the log of the estimate
    underestimates log Z on average: AIS tends to be optimistic about a model's likelihood.

`log_likelihood` turns either estimate into per-example log p(v).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from research.models import rbm as rbm_lib
from research.numerics import softplus


def default_betas(n: int = 14_501) -> np.ndarray:
    """The schedule of Salakhutdinov & Murray (2008): 14,501 betas, spaced 1e-3 on [0, 0.5),
    1e-4 on [0.5, 0.9) and 1e-5 on [0.9, 1], densest where the distributions change fastest.
    Another `n` keeps the three parts in the same proportions (500 : 4,000 : 10,001)."""
    if n < 4:
        raise ValueError(f'an AIS schedule needs at least 4 betas, got {n}')
    first = max(1, round(n * 500 / 14_501))
    second = max(1, round(n * 4000 / 14_501))
    return np.concatenate([np.linspace(0.0, 0.5, first, endpoint=False),
                           np.linspace(0.5, 0.9, second, endpoint=False),
                           np.linspace(0.9, 1.0, n - first - second)]).astype(np.float32)


def _check_betas(betas) -> np.ndarray:
    betas = np.asarray(betas, np.float32)
    if betas.ndim != 1 or len(betas) < 2 or betas[0] != 0.0 or betas[-1] != 1.0 \
            or np.any(np.diff(betas) < 0):
        raise ValueError('betas must be a non-decreasing 1-D schedule from 0 to 1 with at '
                         f'least 2 entries, got {len(np.atleast_1d(betas))} entries from '
                         f'{np.atleast_1d(betas)[0]} to {np.atleast_1d(betas)[-1]}')
    return betas


def base_log_partition(base_visible_bias, hidden: int):
    """log Z_A of the base model: sum_i softplus(b_A_i) + H log 2."""
    return jnp.sum(softplus(base_visible_bias)) + hidden * math.log(2.0)


def ais_log_weights(params, key, *, betas, n_runs: int, base_visible_bias):
    """log w of `n_runs` independent AIS runs: (n_runs,). Runs are one batch; betas a scan."""
    betas = jnp.asarray(_check_betas(betas))
    if n_runs < 1:
        raise ValueError(f'n_runs must be >= 1, got {n_runs}')
    b_a = jnp.asarray(base_visible_bias, jnp.float32)
    b_b = params['b_v']
    if b_a.shape != b_b.shape:
        raise ValueError(f'base_visible_bias must have shape {b_b.shape}, got {b_a.shape}')

    def log_p_star(v, x, beta):
        """log p*_beta(v), given x = b_h + v W."""
        return ((1.0 - beta) * (v @ b_a) + beta * (v @ b_b)
                + jnp.sum(softplus(beta * x), axis=-1))

    def anneal(carry, inputs):
        v, log_w = carry
        beta_prev, beta, key = inputs
        x = rbm_lib.hidden_input(params, v)
        log_w = log_w + log_p_star(v, x, beta) - log_p_star(v, x, beta_prev)
        # One Gibbs sweep of p_beta: h_j ~ sigmoid(beta x_j), then v with the mixed biases.
        k_h, k_v = jax.random.split(key)
        h = jax.random.bernoulli(k_h, jax.nn.sigmoid(beta * x)).astype(jnp.float32)
        logits = (1.0 - beta) * b_a + beta * (b_b + h @ params['w'].T)
        v = jax.random.bernoulli(k_v, jax.nn.sigmoid(logits)).astype(jnp.float32)
        return (v, log_w), None

    k_start, k_steps = jax.random.split(key)
    v0 = jax.random.bernoulli(k_start, jax.nn.sigmoid(b_a), (n_runs, b_a.shape[0]))
    keys = jax.random.split(k_steps, betas.shape[0] - 1)
    init = (v0.astype(jnp.float32), jnp.zeros((n_runs,), jnp.float32))
    (_, log_w), _ = jax.lax.scan(anneal, init, (betas[:-1], betas[1:], keys))
    return log_w


def ais_log_partition(params, key, *, betas=None, n_runs: int = 100, base_visible_bias):
    """(log Z estimate, its standard error in nats) for a Bernoulli-Bernoulli RBM.

    The estimate is log Z_A + log mean_r w_r. The spread is the delta-method standard error of
    that log: std(w) / (mean(w) sqrt(n_runs)). Salakhutdinov & Murray report
    log(mean(w) +- 3 std(w) / sqrt(n)) * Z_A; for a small spread s that is about log Z +- 3 s,
    and unlike the lower end it stays finite when the weights are very uneven. A large spread
    (say > 1 nat) says the schedule is too short or too few runs were made.
    Jit it with `betas` and `n_runs` static, or call it as is (it compiles one scan).
    """
    betas = default_betas() if betas is None else betas
    log_w = ais_log_weights(params, key, betas=betas, n_runs=n_runs,
                            base_visible_bias=base_visible_bias)
    log_mean_w = jax.nn.logsumexp(log_w) - math.log(n_runs)
    relative = jnp.exp(log_w - log_mean_w)  # w / mean(w), mean 1
    spread = jnp.std(relative) / math.sqrt(n_runs)
    log_z_a = base_log_partition(base_visible_bias, params['b_h'].shape[0])
    return log_z_a + log_mean_w, spread


def exact_log_partition(params, *, chunk_bits: int = 12):
    """log Z by summing over all 2^H hidden states, 2^chunk_bits of them at a time.

    Memory is one (2^chunk_bits, V) block whatever H; time grows as 2^H * V * H, so H ~ 20 takes
    seconds on a CPU. Bernoulli visibles only.
    """
    hidden = params['b_h'].shape[0]
    if hidden > 30:
        raise ValueError(f'exact_log_partition sums over 2^H hidden states; H={hidden} is too '
                         f'many (at most 30), use ais_log_partition')
    low = min(hidden, chunk_bits)
    bits = jnp.arange(hidden, dtype=jnp.int32)

    def chunk_log_sum(high):
        index = (high << low) + jnp.arange(2 ** low, dtype=jnp.int32)
        h = ((index[:, None] >> bits) & 1).astype(jnp.float32)  # (2^low, H)
        terms = h @ params['b_h'] + jnp.sum(
            softplus(params['b_v'] + h @ params['w'].T), axis=-1)
        return jax.nn.logsumexp(terms)

    per_chunk = jax.lax.map(chunk_log_sum, jnp.arange(2 ** (hidden - low), dtype=jnp.int32))
    return jax.nn.logsumexp(per_chunk)


def log_likelihood(params, v, log_z):
    """log p(v) = -F(v) - log Z per example, for Bernoulli visibles: (B,)."""
    return -rbm_lib.free_energy(params, v) - log_z
