"""GAN losses and penalties as tables of functions, the GAN train state and the pure train step.

A loss is two functions of the discriminator's logits on real (r) and fake (f) images, each
averaged over the batch (`LOSSES`):
  non_saturating  D: -log s(r) - log(1 - s(f))   G: -log s(f)   (Goodfellow et al. 2014)
  hinge           D: relu(1 - r) + relu(1 + f)   G: -f          (Lim & Ye 2017; Miyato 2018)
  wasserstein     D: f - r                       G: -f          (Arjovsky et al. 2017)
A penalty is a function of the discriminator and a batch, added to its loss with a weight
(`PENALTIES`):
  gp  (|grad_x D(x_hat)| - 1)^2 at random interpolates of real and fake (WGAN-GP: Gulrajani et
      al. 2017, with the wasserstein loss)
  r1  |grad_x D(x)|^2 / 2 at the real images (Mescheder et al. 2018)
A new loss or penalty is one function and one entry in a table the experiment looks names up
in; experiments/proj/lsgan adds least squares that way without touching this file.

The step's schedule is a parameter, not a branch: `critic_steps` n updates D n times per G
update, each time on its own n-th of the batch and fresh fakes (WGAN-GP uses 5), and
`penalty_every` n computes the penalty on every n-th step only, weighted n times (StyleGAN2's
lazy regularisation, n = 16).

Class-conditional GANs (`num_classes` K > 0): the batch carries integer `label`s; D sees each
real image with its label and each fake with the class G was asked for, drawn uniformly; the
penalties take D at the real labels. The sampler and the standing statistics pass any labels
after z through to G.
"""
import dataclasses
import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from research.data import images_to_float


@dataclasses.dataclass(frozen=True)
class GANLoss:
    discriminator: Callable  # (real_logits, fake_logits) -> scalar
    generator: Callable      # (fake_logits) -> scalar


def non_saturating_d(r, f):
    # softplus(-x) = -log sigmoid(x), computed without overflow.
    return jnp.mean(jax.nn.softplus(-r)) + jnp.mean(jax.nn.softplus(f))


def non_saturating_g(f):
    return jnp.mean(jax.nn.softplus(-f))


def hinge_d(r, f):
    return jnp.mean(jax.nn.relu(1 - r)) + jnp.mean(jax.nn.relu(1 + f))


def wasserstein_d(r, f):
    return jnp.mean(f) - jnp.mean(r)


def critic_g(f):
    """The generator's loss against a critic (hinge, Wasserstein): raise its scores of fakes."""
    return -jnp.mean(f)


LOSSES = {'non_saturating': GANLoss(non_saturating_d, non_saturating_g),
          'hinge': GANLoss(hinge_d, critic_g),
          'wasserstein': GANLoss(wasserstein_d, critic_g)}


def _input_gradients(d_fn, x):
    return jax.grad(lambda x: jnp.sum(d_fn(x)))(x).reshape(x.shape[0], -1)


def gradient_penalty(d_fn, real, fake, key):
    """mean over the batch of (|grad_x D(x_hat)|_2 - 1)^2 at random interpolates x_hat."""
    eps = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1))
    grads = _input_gradients(d_fn, eps * real + (1 - eps) * fake)
    norms = jnp.sqrt(jnp.sum(grads ** 2, axis=1) + 1e-12)
    return jnp.mean((norms - 1) ** 2)


def r1_penalty(d_fn, real, fake, key):
    """mean over the batch of |grad_x D(x)|^2 / 2 at the real images."""
    del fake, key
    return 0.5 * jnp.mean(jnp.sum(_input_gradients(d_fn, real) ** 2, axis=1))


PENALTIES = {'none': None, 'gp': gradient_penalty, 'r1': r1_penalty}


def lookup(table: dict, name: str, what: str):
    """table[name], or a ValueError that lists the known names."""
    if name not in table:
        raise ValueError(f'unknown {what} {name!r}; known: {", ".join(table)}')
    return table[name]


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


def _labels(num_classes: int, count: int, key=None) -> tuple:
    """() for an unconditional GAN, else (count uniform class labels,) (zeros without a key)."""
    if not num_classes:
        return ()
    if key is None:
        return (jnp.zeros((count,), jnp.int32),)
    return (jax.random.randint(key, (count,), 0, num_classes),)


def init_gan_state(key, generator: nn.Module, discriminator: nn.Module, tx_g, tx_d,
                   z_dim: int, image_shape, num_classes: int = 0) -> GANState:
    k_g, k_d, k_rng = jax.random.split(key, 3)
    labels = _labels(num_classes, 2)
    g_vars = generator.init(k_g, jnp.zeros((2, z_dim)), *labels, train=False)
    d_vars = discriminator.init(k_d, jnp.zeros((2, *image_shape)), *labels, train=False)
    g_params, d_params = g_vars['params'], d_vars['params']
    return GANState(
        step=jnp.zeros((), jnp.int32), rng=k_rng,
        g_params=g_params, g_batch_stats=g_vars.get('batch_stats', {}), d_params=d_params,
        g_opt_state=tx_g.init(g_params), d_opt_state=tx_d.init(d_params),
        g_ema=jax.tree.map(jnp.copy, g_params))


def _check_schedule(loss, penalty, penalty_weight, penalty_every, critic_steps, ema_decay):
    if not isinstance(loss, GANLoss):
        raise ValueError(f'loss must be a GANLoss (e.g. LOSSES["hinge"]), got {loss!r}')
    if penalty is not None and not callable(penalty):
        raise ValueError(f'penalty must be a function (d_fn, real, fake, key) or None, got '
                         f'{penalty!r}')
    for name, value in (('penalty_every', penalty_every), ('critic_steps', critic_steps)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f'{name} must be an integer >= 1, got {value!r}')
    if penalty_weight < 0:
        raise ValueError(f'penalty_weight must be >= 0, got {penalty_weight}')
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f'ema_decay must be in [0, 1), got {ema_decay}')


def make_gan_step(generator: nn.Module, discriminator: nn.Module, tx_g, tx_d, *,
                  loss: GANLoss, z_dim: int, penalty: Callable | None = None,
                  penalty_weight: float = 10.0, penalty_every: int = 1, critic_steps: int = 1,
                  ema_decay: float = 0.0, num_classes: int = 0):
    """Returns the pure step(state, batch) -> (state, metrics); batch['image'] is uint8 NHWC
    (and batch['label'] int, for `num_classes` > 0).

    `critic_steps` D updates (each on its own slice of the batch, so the batch must divide by
    it), then one G update against the updated D. The discriminator sees real and fake images
    in one concatenated batch (it has no batch statistics, so this is the same function, and one
    large convolution is faster than two). Metrics: d_loss, d_real_logit and d_fake_logit (means
    over the critic steps), g_loss, and with a penalty `gradient_penalty` (times penalty_every
    on the steps that compute it and 0 on the others, so its mean over whole periods is the
    penalty's mean; the loss gets penalty_weight times that).
    """
    _check_schedule(loss, penalty, penalty_weight, penalty_every, critic_steps, ema_decay)

    def generate(g_params, batch_stats, z, *labels):
        return generator.apply({'params': g_params, 'batch_stats': batch_stats}, z, *labels,
                               train=True, mutable=['batch_stats'])

    def discriminate(d_params, x, labels, key):
        return discriminator.apply({'params': d_params}, x, *labels, train=True,
                                   rngs={'dropout': key})

    def penalty_term(d_params, real, labels, fake, keys, step):
        d_fn = lambda x: discriminate(d_params, x, labels, keys[0])
        if penalty_every == 1:
            return penalty(d_fn, real, fake, keys[1])
        return jax.lax.cond(step % penalty_every == 0,
                            lambda: penalty(d_fn, real, fake, keys[1]) * penalty_every,
                            lambda: jnp.zeros((), jnp.float32))

    def critic_step(state, d_params, d_opt_state, real, real_labels, keys):
        """One D update on `real` and as many fresh fakes; keys: fakes, dropout, penalty (2)."""
        n = real.shape[0]
        # The generator's running stats are left to the generator update, which sees the same
        # distribution.
        z = jax.random.normal(keys[0], (n, z_dim))
        fake_labels = _labels(num_classes, n, jax.random.fold_in(keys[0], 1))
        fake = jax.lax.stop_gradient(
            generate(state.g_params, state.g_batch_stats, z, *fake_labels)[0])
        labels = tuple(jnp.concatenate(pair) for pair in zip(real_labels, fake_labels))

        def d_objective(d_params):
            logits = discriminate(d_params, jnp.concatenate([real, fake]), labels, keys[1])
            d_loss = loss.discriminator(logits[:n], logits[n:])
            aux = {'d_real_logit': jnp.mean(logits[:n]), 'd_fake_logit': jnp.mean(logits[n:])}
            if penalty is not None:
                value = penalty_term(d_params, real, real_labels, fake, keys[2:4], state.step)
                d_loss, aux['gradient_penalty'] = d_loss + penalty_weight * value, value
            return d_loss, aux

        (d_loss, aux), d_grads = jax.value_and_grad(d_objective, has_aux=True)(d_params)
        d_updates, d_opt_state = tx_d.update(d_grads, d_opt_state, d_params)
        return optax.apply_updates(d_params, d_updates), d_opt_state, {'d_loss': d_loss, **aux}

    def step(state: GANState, batch):
        base = jax.random.fold_in(state.rng, state.step)
        keys = jax.random.split(base, 6)
        real = images_to_float(batch['image'])
        real_labels = (batch['label'].astype(jnp.int32),) if num_classes else ()
        if real.shape[0] % critic_steps:
            raise ValueError(f'batch of {real.shape[0]} does not split into '
                             f'critic_steps={critic_steps} equal parts')
        n = real.shape[0] // critic_steps

        d_params, d_opt_state, per_critic_step = state.d_params, state.d_opt_state, []
        for i in range(critic_steps):  # unrolled: a handful of steps
            critic_keys = keys[:4] if i == 0 else jax.random.split(jax.random.fold_in(base, i), 4)
            d_params, d_opt_state, d_metrics = critic_step(
                state, d_params, d_opt_state, real[i * n:(i + 1) * n],
                tuple(y[i * n:(i + 1) * n] for y in real_labels), critic_keys)
            per_critic_step.append(d_metrics)
        metrics = jax.tree.map(lambda *v: functools.reduce(jnp.add, v) / len(v), *per_critic_step)

        # Generator update against the updated discriminator.
        fake_labels = _labels(num_classes, n, jax.random.fold_in(keys[4], 1))

        def g_objective(g_params):
            fake, mutated = generate(g_params, state.g_batch_stats,
                                     jax.random.normal(keys[4], (n, z_dim)), *fake_labels)
            return loss.generator(discriminate(d_params, fake, fake_labels, keys[5])), mutated

        (g_loss, mutated), g_grads = jax.value_and_grad(g_objective, has_aux=True)(state.g_params)
        g_updates, g_opt_state = tx_g.update(g_grads, state.g_opt_state, state.g_params)
        g_params = optax.apply_updates(state.g_params, g_updates)
        g_ema = (optax.incremental_update(g_params, state.g_ema, 1.0 - ema_decay)
                 if ema_decay else g_params)

        new_state = state.replace(
            step=state.step + 1, g_params=g_params, d_params=d_params,
            g_batch_stats=mutated.get('batch_stats', state.g_batch_stats),
            g_opt_state=g_opt_state, d_opt_state=d_opt_state, g_ema=g_ema)
        return new_state, {**metrics, 'g_loss': g_loss}

    return step


def make_standing_stats(generator: nn.Module):
    """Jitted (g_params, batch_stats, z[, labels]) -> BatchNorm statistics that match
    `g_params`: those of G's own activations on the batch z (BigGAN's "standing statistics").

    The running averages in the train state follow the live generator's weights; sampling from
    an EMA of the weights needs statistics of the EMA's activations. A train-mode pass updates
    each average as new = m * old + (1 - m) * batch: from old = 0 it gives (1 - m) * batch, and
    old = 1 against old = 0 on any two rows gives m, so batch = new_0 / (1 - m) for any
    momentum m.
    """
    @jax.jit
    def standing(g_params, batch_stats, z, *labels):
        def updated(fill, z, *labels):
            old = jax.tree.map(lambda a: jnp.full_like(a, fill), batch_stats)
            _, mutated = generator.apply({'params': g_params, 'batch_stats': old}, z, *labels,
                                         train=True, mutable=['batch_stats'])
            return mutated['batch_stats']
        momentum = jax.tree.map(jnp.subtract, updated(1.0, z[:2], *(y[:2] for y in labels)),
                                updated(0.0, z[:2], *(y[:2] for y in labels)))
        return jax.tree.map(lambda a, m: a / (1.0 - m), updated(0.0, z, *labels), momentum)
    return standing


def make_sampler(generator: nn.Module):
    """Jitted (g_params, batch_stats, z[, labels]) -> uint8 [0, 255] NHWC samples, eval mode
    (running BN)."""
    @jax.jit
    def sample(g_params, batch_stats, z, *labels):
        x = generator.apply({'params': g_params, 'batch_stats': batch_stats}, z, *labels,
                            train=False)
        return jnp.round((jnp.clip(x, -1, 1) + 1) * 127.5).astype(jnp.uint8)
    return sample
