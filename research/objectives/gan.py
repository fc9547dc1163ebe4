"""GAN losses, the GAN train state and the pure train step (D update, then G update).

Losses of discriminator logits on real (r) and fake (f) images:
  non_saturating  D: -log s(r) - log(1 - s(f))    G: -log s(f)        (Goodfellow et al. 2014)
  hinge           D: relu(1 - r) + relu(1 + f)    G: -f               (Lim & Ye 2017; Miyato 2018)
  wgan_gp         D: f - r + gp_weight * (|grad D(x_hat)| - 1)^2   G: -f   (Gulrajani et al. 2017)
each averaged over the batch. The gradient penalty needs the discriminator, so it is added by the
step, not by `discriminator_loss`.
"""
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

LOSSES = ('non_saturating', 'hinge', 'wgan_gp')


def check_loss(loss: str) -> None:
    if loss not in LOSSES:
        raise ValueError(f'unknown GAN loss {loss!r}; known losses: {", ".join(LOSSES)}')


def discriminator_loss(loss: str, real_logits, fake_logits):
    """The discriminator's loss on one batch of logits (without any gradient penalty)."""
    check_loss(loss)
    r, f = real_logits, fake_logits
    if loss == 'non_saturating':
        # softplus(-x) = -log sigmoid(x), computed without overflow.
        return jnp.mean(jax.nn.softplus(-r)) + jnp.mean(jax.nn.softplus(f))
    if loss == 'hinge':
        return jnp.mean(jax.nn.relu(1 - r)) + jnp.mean(jax.nn.relu(1 + f))
    return jnp.mean(f) - jnp.mean(r)


def generator_loss(loss: str, fake_logits):
    """The generator's loss on the discriminator's logits for its samples."""
    check_loss(loss)
    if loss == 'non_saturating':
        return jnp.mean(jax.nn.softplus(-fake_logits))
    return -jnp.mean(fake_logits)


def gradient_penalty(d_fn, real, fake, key):
    """mean over the batch of (|grad_x D(x_hat)|_2 - 1)^2 at random interpolates x_hat."""
    eps = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1))
    x_hat = eps * real + (1 - eps) * fake
    grads = jax.grad(lambda x: jnp.sum(d_fn(x)))(x_hat)
    norms = jnp.sqrt(jnp.sum(grads.reshape(grads.shape[0], -1) ** 2, axis=1) + 1e-12)
    return jnp.mean((norms - 1) ** 2)


@flax.struct.dataclass
class GANState:
    step: jax.Array            # completed train steps, int32
    rng: jax.Array             # base key; step k uses fold_in(rng, k)
    g_params: Any
    g_batch_stats: Any         # BatchNorm running averages ({} for the MLP generator)
    d_params: Any
    g_opt_state: Any
    d_opt_state: Any
    g_ema: Any                 # EMA of g_params (a copy of g_params when EMA is off)


def init_gan_state(key, generator: nn.Module, discriminator: nn.Module, tx_g, tx_d,
                   z_dim: int, image_shape) -> GANState:
    k_g, k_d, k_rng = jax.random.split(key, 3)
    g_vars = generator.init(k_g, jnp.zeros((2, z_dim)), train=False)
    d_vars = discriminator.init(k_d, jnp.zeros((2, *image_shape)), train=False)
    g_params, d_params = g_vars['params'], d_vars['params']
    return GANState(
        step=jnp.zeros((), jnp.int32), rng=k_rng,
        g_params=g_params, g_batch_stats=g_vars.get('batch_stats', {}), d_params=d_params,
        g_opt_state=tx_g.init(g_params), d_opt_state=tx_d.init(d_params),
        g_ema=jax.tree.map(jnp.copy, g_params))


def images_to_float(images):
    """uint8 [0, 255] -> float32 [-1, 1]. Batches travel as uint8 (4x fewer bytes to the device)."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def make_gan_step(generator: nn.Module, discriminator: nn.Module, tx_g, tx_d, *, loss: str,
                  z_dim: int, gp_weight: float = 10.0, ema_decay: float = 0.0):
    """Returns the pure step(state, batch) -> (state, metrics); batch['image'] is uint8 NHWC.

    The discriminator sees real and fake images in one concatenated batch (it has no batch
    statistics, so this is the same function, and one large convolution is faster than two).
    """
    check_loss(loss)
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f'ema_decay must be in [0, 1), got {ema_decay}')

    def generate(g_params, batch_stats, z):
        return generator.apply({'params': g_params, 'batch_stats': batch_stats}, z,
                               train=True, mutable=['batch_stats'])

    def discriminate(d_params, x, key):
        return discriminator.apply({'params': d_params}, x, train=True, rngs={'dropout': key})

    def step(state: GANState, batch):
        keys = jax.random.split(jax.random.fold_in(state.rng, state.step), 6)
        real = images_to_float(batch['image'])
        n = real.shape[0]

        # Discriminator update on a fresh fake batch (the generator's running stats are left
        # to the generator update, which sees the same distribution).
        z = jax.random.normal(keys[0], (n, z_dim))
        fake = jax.lax.stop_gradient(generate(state.g_params, state.g_batch_stats, z)[0])

        def d_objective(d_params):
            logits = discriminate(d_params, jnp.concatenate([real, fake]), keys[1])
            d_loss = discriminator_loss(loss, logits[:n], logits[n:])
            aux = {'d_real_logit': jnp.mean(logits[:n]), 'd_fake_logit': jnp.mean(logits[n:])}
            if loss == 'wgan_gp':
                gp = gradient_penalty(lambda x: discriminate(d_params, x, keys[2]), real, fake,
                                      keys[3])
                d_loss, aux['gradient_penalty'] = d_loss + gp_weight * gp, gp
            return d_loss, aux

        (d_loss, aux), d_grads = jax.value_and_grad(d_objective, has_aux=True)(state.d_params)
        d_updates, d_opt_state = tx_d.update(d_grads, state.d_opt_state, state.d_params)
        d_params = optax.apply_updates(state.d_params, d_updates)

        # Generator update against the updated discriminator.
        def g_objective(g_params):
            fake, mutated = generate(g_params, state.g_batch_stats,
                                     jax.random.normal(keys[4], (n, z_dim)))
            return generator_loss(loss, discriminate(d_params, fake, keys[5])), mutated

        (g_loss, mutated), g_grads = jax.value_and_grad(g_objective, has_aux=True)(state.g_params)
        g_updates, g_opt_state = tx_g.update(g_grads, state.g_opt_state, state.g_params)
        g_params = optax.apply_updates(state.g_params, g_updates)
        g_ema = (optax.incremental_update(g_params, state.g_ema, 1.0 - ema_decay)
                 if ema_decay else g_params)

        new_state = state.replace(
            step=state.step + 1, g_params=g_params, d_params=d_params,
            g_batch_stats=mutated.get('batch_stats', state.g_batch_stats),
            g_opt_state=g_opt_state, d_opt_state=d_opt_state, g_ema=g_ema)
        return new_state, {'d_loss': d_loss, 'g_loss': g_loss, **aux}

    return step


def make_sampler(generator: nn.Module):
    """Jitted (g_params, batch_stats, z) -> uint8 [0, 255] NHWC samples, eval mode (running BN)."""
    @jax.jit
    def sample(g_params, batch_stats, z):
        x = generator.apply({'params': g_params, 'batch_stats': batch_stats}, z, train=False)
        return jnp.round((jnp.clip(x, -1, 1) + 1) * 127.5).astype(jnp.uint8)
    return sample
