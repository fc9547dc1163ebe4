"""Contrastive divergence for RBMs: the train state, the pure CD-k / PCD step and its monitors.

The log-likelihood gradient of an RBM is a difference of two expectations,

  d log p(v) / dW = <v h^T>_data - <v h^T>_model,

the first over the data with h ~ p(h|v), the second over the model's joint distribution, which is
intractable. CD-k (Hinton 2002) estimates it from k Gibbs sweeps started at the data; persistent
CD (PCD, Tieleman 2008) from k sweeps of fantasy particles that carry over from step to step, so
they can wander far from the data and find the model's spurious modes. Following Hinton's
practical guide (2010), both phases use the hidden *probabilities* p(h|v), not sampled states,
in the statistics (less noise, same expectation); the negative visibles are the sampled states
at the end of the chain, since those are what a persistent chain must carry on from.

The update is SGD with momentum and L2 weight decay on the weights only (never on the biases):

  velocity <- momentum * velocity + lr * (gradient - weight_decay * W);  params += velocity.

The likelihood itself cannot be monitored cheaply (it needs Z; see research.evals.ais). The step
reports the reconstruction error, which its first Gibbs half-sweep gives for free; `monitors`
adds the mean free energy and a stochastic pseudo-likelihood, for an experiment to compute at its
logging steps (a pass of their own over the batch would cost the step a third of its speed).
"""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from research.models import rbm as rbm_lib
from research.numerics import softplus


@flax.struct.dataclass
class RBMState:
    step: jax.Array      # completed train steps, int32
    rng: jax.Array       # base key; step k uses fold_in(rng, k)
    params: Any          # {'w', 'b_v', 'b_h'}
    velocity: Any        # the momentum buffer, same tree as params
    chains: jax.Array    # (n_chains, V) persistent fantasy particles; CD never reads or moves them


def init_rbm_state(key, params, *, n_chains: int, visible: str = 'bernoulli') -> RBMState:
    """A state at step 0 with zero velocity and `n_chains` fantasy particles.

    The chains are always present, PCD or not, so a CD state and a PCD state have the same tree
    (one checkpoint format, and a run may switch). They start as a sample of the model with its
    hidden units off, p(v | h = 0): with visible biases from the data's marginals that is the
    base-rate distribution, a better start than uniform noise.
    """
    rbm_lib.check_visible(visible)
    if n_chains < 1:
        raise ValueError(f'n_chains must be >= 1, got {n_chains}')
    k_chains, k_rng = jax.random.split(key)
    hidden_off = jnp.zeros((n_chains, params['b_h'].shape[0]), jnp.float32)
    chains = rbm_lib.sample_visible(params, hidden_off, k_chains, visible)
    return RBMState(step=jnp.zeros((), jnp.int32), rng=k_rng, params=params,
                    velocity=jax.tree.map(jnp.zeros_like, params), chains=chains)


def cd_gradient(v_data, ph_data, v_model, ph_model) -> dict:
    """<.>_data - <.>_model for W, b_v and b_h, given the hidden probabilities of both phases.

    Each phase is averaged over its own rows, so a PCD run may have more or fewer chains than
    examples in a batch.
    """
    n_data, n_model = v_data.shape[0], v_model.shape[0]
    return {'w': v_data.T @ ph_data / n_data - v_model.T @ ph_model / n_model,
            'b_v': jnp.mean(v_data, axis=0) - jnp.mean(v_model, axis=0),
            'b_h': jnp.mean(ph_data, axis=0) - jnp.mean(ph_model, axis=0)}


def run_chains(params, v, key, k: int, visible: str, first: int = 0):
    """Gibbs sweeps first..k-1 from v; sweep i uses fold_in(key, i). Returns the visible states."""
    def sweep(i, v):
        return rbm_lib.gibbs_step(params, v, jax.random.fold_in(key, i), visible)[0]
    return jax.lax.fori_loop(first, k, sweep, v)


def reconstruction_error(v, recon):
    """|v - recon|^2 per example, summed over the visible units: (B,).

    `recon` is E[v | h0] for h0 ~ p(h | v) sampled, the first half of the chain's first sweep:
    the definition of Hinton's rbm.m, free in CD, and a strong hint of learning, though not what
    CD optimises: it can fall while the likelihood gets worse (Hinton 2010, section 5).
    """
    return jnp.sum((v - recon) ** 2, axis=-1)


def pseudo_likelihood(params, v, key):
    """V * log p(v_i | v_-i) for one random unit i per example: (B,), Bernoulli visibles only.

    p(v_i | v_-i) = sigmoid(F(v with bit i flipped) - F(v)), so this is an unbiased stochastic
    estimate of the log pseudo-likelihood sum_i log p(v_i | v_-i). Meaningful for binary v;
    grey levels are flipped to 1 - v. Flipping one bit changes v W by one row of W, so the
    flipped free energy costs a gather, not a second (B, V) x (V, H) product.
    """
    n, dims = v.shape
    i = jax.random.randint(key, (n,), 0, dims)
    v_i = jnp.take_along_axis(v, i[:, None], axis=1)[:, 0]
    delta = 1.0 - 2.0 * v_i  # the change of bit i
    pre = rbm_lib.hidden_input(params, v)
    pre_flipped = pre + delta[:, None] * params['w'][i]
    visible_term = v @ params['b_v']
    energy = -visible_term - jnp.sum(softplus(pre), axis=-1)
    energy_flipped = (-(visible_term + delta * params['b_v'][i])
                      - jnp.sum(softplus(pre_flipped), axis=-1))
    return dims * jax.nn.log_sigmoid(energy_flipped - energy)


def monitors(params, v, key, visible: str = 'bernoulli') -> dict:
    """Batch means of the free energy and, for Bernoulli visibles, the pseudo-likelihood.

    Compare them on training and held-out data: a held-out free energy drifting above the
    training one is the overfitting signal of Hinton's practical guide (2010, section 6).
    """
    values = {'free_energy': jnp.mean(rbm_lib.free_energy(params, v, visible=visible))}
    if visible == 'bernoulli':
        values['pseudo_likelihood'] = jnp.mean(pseudo_likelihood(params, v, key))
    return values


LR_DECAYS = ('none', 'linear')


def learning_rate(lr: float, decay: str, steps: int):
    """The step's `lr`: constant ('none'), or decayed linearly to 0 at `steps` ('linear': Tieleman
    (2008) decays PCD's rate so that the final parameters settle)."""
    if decay not in LR_DECAYS:
        raise ValueError(f"rbm.lr_decay must be 'none' or 'linear', got {decay!r}")
    return optax.linear_schedule(lr, 0.0, steps) if decay == 'linear' else lr


def check_sgd(lr, momentum: float, weight_decay: float) -> None:
    """Refuses a rate <= 0 (unless a schedule), momentum outside [0, 1) or a negative decay."""
    if not callable(lr) and lr <= 0:
        raise ValueError(f'lr must be > 0, got {lr}')
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f'momentum must be in [0, 1), got {momentum}')
    if weight_decay < 0:
        raise ValueError(f'weight_decay must be >= 0, got {weight_decay}')


def make_cd_step(*, k: int = 1, persistent: bool = False, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, visible: str = 'bernoulli'):
    """Returns the pure step(state, batch) -> (state, metrics); batch['v'] is float32 (B, V).

    CD-k when `persistent` is False (the negative chains start at the batch; state.chains stay
    as they are), PCD-k when True (they start at state.chains, which then hold the new states).
    The one metric, `recon_error`, is a batch mean under the parameters before the update.
    `lr` is a number or a schedule, step -> rate (e.g. optax.linear_schedule: Tieleman (2008)
    decays PCD's rate linearly to zero, so that the final parameters settle).

    CD-1 costs five (B, V) x (V, H)-sized products, the minimum: p(h|v) of the data once (for
    the statistics, the chain's first sweep and nothing else), E[v|h0], p(h|v1) and the two
    outer products. PCD adds one for the reconstruction of the data.
    """
    rbm_lib.check_visible(visible)
    if k < 1:
        raise ValueError(f'CD needs k >= 1 Gibbs sweeps, got k={k}')
    check_sgd(lr, momentum, weight_decay)

    def step(state: RBMState, batch):
        v = batch['v']
        if v.ndim != 2 or v.shape[1] != state.params['w'].shape[0]:
            raise ValueError(f"batch['v'] must be (B, {state.params['w'].shape[0]}), "
                             f'got {v.shape}')
        k_chain, k_recon = jax.random.split(jax.random.fold_in(state.rng, state.step))
        params = state.params
        ph_data = rbm_lib.hidden_probs(params, v)
        # The half-sweep from the data: sweep 0 of a CD chain (gibbs_step's keys exactly).
        k_h, k_v = jax.random.split(jax.random.fold_in(k_chain, 0) if not persistent
                                    else k_recon)
        h0 = jax.random.bernoulli(k_h, ph_data).astype(jnp.float32)
        recon = rbm_lib.visible_mean(params, h0, visible)
        if persistent:
            v_model = run_chains(params, state.chains, k_chain, k, visible)
        else:
            v_model = run_chains(params, rbm_lib.draw_visible(recon, k_v, visible),
                                 k_chain, k, visible, first=1)
        grads = cd_gradient(v, ph_data, v_model, rbm_lib.hidden_probs(params, v_model))
        grads['w'] = grads['w'] - weight_decay * params['w']
        rate = lr(state.step) if callable(lr) else lr
        velocity = jax.tree.map(lambda m, g: momentum * m + rate * g, state.velocity, grads)
        new_params = jax.tree.map(jnp.add, params, velocity)
        metrics = {'recon_error': jnp.mean(reconstruction_error(v, recon))}
        chains = v_model if persistent else state.chains
        return state.replace(step=state.step + 1, params=new_params, velocity=velocity,
                             chains=chains), metrics

    return step
