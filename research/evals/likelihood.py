"""Held-out likelihoods over a whole dataset, each example counted exactly once.

  * `importance_sampled_log_px`: log p(x) ~= log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q, with k
    as large as wanted (5,000 is the standard for MNIST VAEs, Burda et al. 2016) in chunks of
    `chunk` samples whose log-sum-exp is accumulated on the fly, so memory stays bounded by one
    chunk. Its expectation is a lower bound on log p(x) that tightens as k grows.
  * `vae_elbo_fn` / `vae_log_px_fn`: the per-example functions for a VAE, and
    `make_vae_evaluator` that runs both over a whole dataset with `DatasetEvaluator`
    (research/evals/evaluator.py): every example counted exactly once.

Every number is in nats per example; `summarize` adds the standard error and bits per dimension.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from research.evals.evaluator import DatasetEvaluator
from research.objectives import likelihoods
from research.objectives import vae as vae_lib


def importance_sampled_log_px(log_weights_fn, key, k: int, chunk: int):
    """log (1/k) sum_{i<k} exp(w_i) with w = log_weights_fn(key_j, chunk) -> (chunk, B) per chunk.

    Jittable; the chunks run in a `fori_loop` with a running max and sum (streaming log-sum-exp).
    """
    if k < 1 or chunk < 1 or k % chunk:
        raise ValueError(f'k ({k}) must be a positive multiple of chunk ({chunk})')

    def body(j, carry):
        top, total = carry
        log_w = log_weights_fn(jax.random.fold_in(key, j), chunk)
        new_top = jnp.maximum(top, jnp.max(log_w, axis=0))
        total = total * jnp.exp(top - new_top) + jnp.sum(jnp.exp(log_w - new_top), axis=0)
        return new_top, total

    first = log_weights_fn(jax.random.fold_in(key, 0), chunk)
    top = jnp.max(first, axis=0)
    init = (top, jnp.sum(jnp.exp(first - top), axis=0))
    top, total = jax.lax.fori_loop(1, k // chunk, body, init)
    return top + jnp.log(total) - math.log(k)


def _check_binary(likelihood: str, images):
    if likelihood == 'bernoulli' and not np.all((images == 0) | (images == 255)):
        raise ValueError('the Bernoulli likelihood is evaluated on binarized images (pixels 0 or '
                         '255); binarize the evaluation set once with research.data.binarize')


def vae_elbo_fn(vae, likelihood: str):
    """(params, uint8 images, key) -> per-example ELBO (one z sample, analytic KL)."""
    def fn(params, images, key):
        x = likelihoods.target(likelihood, images, None, dynamic=False)
        rec, kl = vae_lib.elbo_terms(vae, params, x, key, likelihood)
        return rec - kl
    return fn


def vae_log_px_fn(vae, likelihood: str, k: int, chunk: int):
    """(params, uint8 images, key) -> per-example importance-sampled log p(x), k samples."""
    def fn(params, images, key):
        x = likelihoods.target(likelihood, images, None, dynamic=False)
        return importance_sampled_log_px(
            lambda key, n: vae_lib.log_weights(vae, params, x, key, n, likelihood), key, k, chunk)
    return fn


def make_vae_evaluator(vae, *, likelihood: str, batch_size: int, mesh=None, k: int = 5000,
                       chunk: int = 500):
    """evaluate(params, images, key, nll=False) -> {'elbo', 'elbo_sem'[, 'nll', 'nll_sem',
    'nll_bits_per_dim']} over all of `images`: the test ELBO and, with `nll`, the k-sample
    importance-sampled -log p(x). Each function compiles once, on first use."""
    elbo_eval = DatasetEvaluator(vae_elbo_fn(vae, likelihood), batch_size, mesh)
    log_px_eval = DatasetEvaluator(vae_log_px_fn(vae, likelihood, k, chunk), batch_size, mesh)

    def evaluate(params, images, key, nll: bool = False) -> dict:
        _check_binary(likelihood, images)
        k_elbo, k_is = jax.random.split(key)
        result = summarize('elbo', elbo_eval(params, images, k_elbo))
        if nll:
            dims = int(np.prod(images.shape[1:]))
            result.update(summarize('nll', -log_px_eval(params, images, k_is), dims))
        return result

    return evaluate


def evaluate_vae(vae, params, images, *, likelihood: str, batch_size: int, mesh, key,
                 k: int = 0, chunk: int = 500) -> dict:
    """One-off `make_vae_evaluator(...)(params, images, key, nll=k > 0)`."""
    return make_vae_evaluator(vae, likelihood=likelihood, batch_size=batch_size, mesh=mesh,
                              k=k or chunk, chunk=chunk)(params, images, key, nll=k > 0)


def summarize(name: str, values: np.ndarray, dims: int | None = None) -> dict:
    """Mean over examples, its standard error, and (given `dims`) the mean in bits per dim."""
    mean = float(np.mean(values))
    sem = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
    result = {name: mean, f'{name}_sem': sem}
    if dims:
        result[f'{name}_bits_per_dim'] = float(likelihoods.bits_per_dim(mean, dims))
    return result
