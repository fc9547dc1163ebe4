"""VAE bounds and the pure train step (its state: research/objectives/state.py).

For an image x with posterior q(z|x) = N(mean, diag(exp(logvar))) and prior p(z) = N(0, I):

  ELBO   E_q[log p(x|z)] - KL(q || p), with the KL in closed form and one reparameterised z
         (Kingma & Welling 2014);
  IWAE   E[log (1/k) sum_i w_i], w_i = p(x, z_i) / q(z_i | x), z_1..z_k ~ q (Burda et al. 2016):
         a lower bound on log p(x) that tightens as k grows; k = 1 is the ELBO with a sampled KL.

KL warm-up multiplies the prior/posterior part by beta, rising linearly from `beta_start` to 1
over `warmup_steps` (Sonderby et al. 2016); at beta = 1 both are the bounds above. Every
quantity is per example, in nats; the step minimises the batch mean of the negative bound.
"""
import math

import jax
import jax.numpy as jnp
import optax

from research.objectives import likelihoods
from research.objectives.state import TrainState, init_train_state

OBJECTIVES = ('elbo', 'iwae')
_LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mean, logvar):
    """KL(N(mean, exp(logvar)) || N(0, I)), summed over the last axis."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + mean ** 2 - 1.0 - logvar, axis=-1)


def log_normal(z, mean, logvar):
    """log N(z; mean, diag(exp(logvar))), summed over the last axis."""
    return -0.5 * jnp.sum(_LOG_2PI + logvar + (z - mean) ** 2 * jnp.exp(-logvar), axis=-1)


def log_standard_normal(z):
    return -0.5 * jnp.sum(_LOG_2PI + z ** 2, axis=-1)


def elbo_terms(vae, params, x, key, likelihood: str):
    """(log p(x|z) for one z ~ q, KL(q || p)) per example, each (B,)."""
    mean, logvar = vae.apply({'params': params}, x, method=vae.encode)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
    out = vae.apply({'params': params}, z, method=vae.decode)
    return likelihoods.log_prob(likelihood, out, x), gaussian_kl(mean, logvar)


def log_weight_terms(vae, params, x, key, k: int, likelihood: str):
    """(log p(x|z_i), log p(z_i) - log q(z_i|x)) for z_1..z_k ~ q(z|x), each (k, B).

    The k samples go through the decoder as one (k*B)-row batch, not a loop.
    """
    mean, logvar = vae.apply({'params': params}, x, method=vae.encode)
    eps = jax.random.normal(key, (k,) + mean.shape)
    z = mean + jnp.exp(0.5 * logvar) * eps
    out = vae.apply({'params': params}, z.reshape(-1, z.shape[-1]), method=vae.decode)
    log_px = likelihoods.log_prob(likelihood, out.reshape(k, *x.shape[:1], *out.shape[1:]), x)
    # log q at z = mean + std*eps, written in eps so it is exact even for tiny variances.
    log_q = -0.5 * jnp.sum(_LOG_2PI + logvar + eps ** 2, axis=-1)
    return log_px, log_standard_normal(z) - log_q


def log_weights(vae, params, x, key, k: int, likelihood: str):
    """log w_i = log p(x, z_i) - log q(z_i|x) for z_1..z_k ~ q(z|x): (k, B)."""
    log_px, log_ratio = log_weight_terms(vae, params, x, key, k, likelihood)
    return log_px + log_ratio


def iwae_bound(log_w):
    """log (1/k) sum_i exp(log_w_i) over axis 0."""
    return jax.nn.logsumexp(log_w, axis=0) - math.log(log_w.shape[0])


def kl_beta(step, warmup_steps: int, beta_start: float):
    if warmup_steps <= 0:
        return jnp.float32(1.0)
    frac = jnp.minimum(step.astype(jnp.float32) / warmup_steps, 1.0)
    return beta_start + (1.0 - beta_start) * frac


def init_vae_state(key, vae, tx, image_shape, latent: int) -> TrainState:
    return init_train_state(key, vae, tx, jnp.zeros((2, *image_shape)), jnp.zeros((2, latent)))


def make_vae_step(vae, tx, *, likelihood: str, objective: str = 'elbo', k: int = 1,
                  warmup_steps: int = 0, beta_start: float = 0.0, dynamic: bool = True):
    """Returns the pure step(state, batch) -> (state, metrics); batch['image'] is uint8 NHWC.

    Metrics are batch means, in nats per example: `loss` (the negative bound being minimised,
    beta included), `elbo` (at beta = 1), `rec` (E_q log p(x|z)), `kl`, and `beta`.
    """
    likelihoods.check_likelihood(likelihood)
    if objective not in OBJECTIVES:
        raise ValueError(f'unknown VAE objective {objective!r}; known: {", ".join(OBJECTIVES)}')
    if k < 1 or (objective == 'elbo' and k != 1):
        raise ValueError(f'k must be 1 for the ELBO and >= 1 for IWAE, got k={k} with '
                         f'objective {objective!r}')
    if not 0.0 <= beta_start <= 1.0:
        raise ValueError(f'beta_start must be in [0, 1], got {beta_start}')

    def step(state: TrainState, batch):
        k_bin, k_z = jax.random.split(jax.random.fold_in(state.rng, state.step))
        x = likelihoods.target(likelihood, batch['image'], k_bin, dynamic)
        beta = kl_beta(state.step, warmup_steps, beta_start)

        def objective_fn(params):
            if objective == 'elbo':
                rec, kl = elbo_terms(vae, params, x, k_z, likelihood)
                return -jnp.mean(rec - beta * kl), {'rec': rec, 'kl': kl, 'elbo': rec - kl}
            log_px, log_ratio = log_weight_terms(vae, params, x, k_z, k, likelihood)
            bound = iwae_bound(log_px + beta * log_ratio)
            # The ELBO of the same draws (sampled KL), for comparison with ELBO-trained runs.
            return -jnp.mean(bound), {'elbo': jnp.mean(log_px + log_ratio, axis=0)}

        (loss, aux), grads = jax.value_and_grad(objective_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {'loss': loss, 'beta': beta, **{n: jnp.mean(v) for n, v in aux.items()}}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step


def make_decoder_means(vae, likelihood: str):
    """Jitted (params, z) -> uint8 pictures of the decoder's mean."""
    @jax.jit
    def decode(params, z):
        return likelihoods.mean_image(likelihood, vae.apply({'params': params}, z,
                                                            method=vae.decode))
    return decode
