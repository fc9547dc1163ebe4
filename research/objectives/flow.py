"""Flow matching with straight paths (rectified flow; Liu et al. 2023, Lipman et al. 2023), and
its ODE sampler.

Noise x0 ~ N(0, I) and an image x1 (grey levels in [-1, 1]) are joined by the straight path
x_t = (1 - t) x0 + t x1, t in [0, 1], whose velocity is x1 - x0. The model v(x, t) is trained to
predict it:

    loss = E_{t ~ U(0, 1), x0, x1} || v(x_t, t) - (x1 - x0) ||^2      (mean over pixels)

whose minimiser is the velocity field E[x1 - x0 | x_t] of a flow that carries N(0, I) to the
data. Sampling integrates dx/dt = v(x, t) from noise at t = 0 to t = 1 with `steps` uniform
steps: Euler (one evaluation a step, error O(1/steps)) or Heun (Euler's step corrected by the
trapezoid rule, two evaluations, O(1/steps^2)). The state carries an exponential moving average
of the parameters, which the samples use (`ema_decay`, 0 for the live parameters).
"""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from research.data import images_to_float

METHODS = ('euler', 'heun')


@flax.struct.dataclass
class FlowState:
    step: jax.Array   # completed train steps, int32
    rng: jax.Array    # base key; step k uses fold_in(rng, k)
    params: Any
    ema_params: Any   # what samples use (a copy of params at step 0)
    opt_state: Any


def init_flow_state(key, model, tx, image_shape) -> FlowState:
    k_init, k_rng = jax.random.split(key)
    params = model.init(k_init, jnp.zeros((2, *image_shape)), jnp.zeros((2,)))['params']
    return FlowState(step=jnp.zeros((), jnp.int32), rng=k_rng, params=params,
                     ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params))


def path(x0, x1, t):
    """(x_t, the target velocity x1 - x0) on the straight path at times t (B,)."""
    s = t.reshape(-1, *([1] * (x1.ndim - 1)))
    return (1.0 - s) * x0 + s * x1, x1 - x0


def flow_loss(apply, params, x1, key):
    """The flow-matching loss of a batch x1 (B, ...): mean over the batch and pixels of the
    squared error of `apply(params, x_t, t)` against x1 - x0."""
    k_t, k_noise = jax.random.split(key)
    t = jax.random.uniform(k_t, (x1.shape[0],))
    x_t, target = path(jax.random.normal(k_noise, x1.shape), x1, t)
    return jnp.mean((apply(params, x_t, t) - target) ** 2)


def make_flow_step(model, tx, *, ema_decay: float = 0.999):
    """Returns the pure step(state, {'image': uint8 (B, H, W, C)}) -> (state, {'loss'})."""
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f'ema_decay must be in [0, 1), got {ema_decay}')
    apply = lambda params, x, t: model.apply({'params': params}, x, t)

    def step(state: FlowState, batch):
        x1 = images_to_float(batch['image'])
        key = jax.random.fold_in(state.rng, state.step)
        loss, grads = jax.value_and_grad(flow_loss, argnums=1)(apply, state.params, x1, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = optax.incremental_update(params, state.ema_params, 1.0 - ema_decay)
        return state.replace(step=state.step + 1, params=params, ema_params=ema,
                             opt_state=opt_state), {'loss': loss}

    return step


def integrate(velocity, x, *, steps: int, method: str = 'heun', keep: int = 0):
    """x(1) from x(0) = x under dx/dt = velocity(x, t) (t a (B,) array), with `steps` uniform
    steps of `method`; with keep = n > 0 also the states at n evenly spaced times, t = 0 and 1
    included, stacked on a new first axis (a sample timeline). Returns x(1) or (x(1), kept)."""
    if method not in METHODS:
        raise ValueError(f'unknown ODE method {method!r}; known: {", ".join(METHODS)}')
    if steps < 1:
        raise ValueError(f'the sampler needs steps >= 1, got {steps}')
    h = 1.0 / steps
    at = lambda t: jnp.full((x.shape[0],), t, x.dtype)

    def one(x, i):
        t = i * h
        v = velocity(x, at(t))
        if method == 'heun':
            v = 0.5 * (v + velocity(x + h * v, at(t + h)))
        x = x + h * v
        return x, x

    x1, path_ = jax.lax.scan(one, x, jnp.arange(steps, dtype=x.dtype))
    if not keep:
        return x1
    states = jnp.concatenate([x[None], path_])  # t = 0, h, ..., 1
    picks = jnp.round(jnp.linspace(0, steps, keep)).astype(jnp.int32)
    return x1, states[picks]


def sample(model, params, key, n: int, image_shape, *, steps: int, method: str = 'heun',
           keep: int = 0):
    """n images (n, *image_shape) in [-1, 1] (clipped) from noise drawn from `key`; with keep,
    also the timeline (research.objectives.flow.integrate)."""
    velocity = lambda x, t: model.apply({'params': params}, x, t)
    out = integrate(velocity, jax.random.normal(key, (n, *image_shape)), steps=steps,
                    method=method, keep=keep)
    clip = lambda x: jnp.clip(x, -1.0, 1.0)
    return (clip(out[0]), clip(out[1])) if keep else clip(out)
