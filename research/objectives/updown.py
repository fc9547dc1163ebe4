"""Up-down fine-tuning of a DBN as a generative model (Hinton, Osindero & Teh 2006, appendix B).

After greedy training the DBN's lower layers serve twice: read down (W, b_v) they are the
directed generative model p(h_l | h_{l+1}); read up (W, b_h) they are the recognition model
q(h_{l+1} | h_l). Up-down unties the two (`init_updown_state`) and trains them by a contrastive
form of wake-sleep, one step per batch:

  up (wake)    h_1 ~ q(h_1 | v), ..., h_{L-1} ~ q(h_{L-1} | h_{L-2}): sampled states
  top          CD-k in the top RBM, its chain started at the wake states h_{L-1}
  down (sleep) from the chain's last visible states, h_{L-2} ~ p(h_{L-2} | h_{L-1}), ..., v ~
               p(v | h_1): sampled states of the generative model
  wake update  generative weights up the gradient of sum_l log p(h_l | h_{l+1}) at the wake
               states: in expectation over q, the gradient of the variational bound
               E_q[log p(v, h)] + H(q) in those weights (research/evals/dbn_bound.py)
  sleep update recognition weights up the gradient of sum_l log q(h_{l+1} | h_l) at the sleep
               states: q learns to invert what the generative model makes
  top update   the CD-k statistics <h_{L-1} p(h_L | h_{L-1})>_wake - <.>_chain

SGD with momentum and L2 weight decay on the weights (as in research/objectives/rbm.py). The
pixels are binarized afresh each step (each grey level the probability of a 1).
"""
from typing import Any

import flax
import jax
import jax.numpy as jnp

from research.models import dbn as dbn_lib
from research.models import rbm as rbm_lib
from research.objectives.dbn import pixels
from research.objectives.rbm import cd_gradient, check_sgd, run_chains


@flax.struct.dataclass
class UpDownState:
    step: jax.Array   # completed train steps, int32
    rng: jax.Array    # base key; step k uses fold_in(rng, k)
    params: Any       # {'recognition': [{'w', 'b_h'}], 'generative': [{'w', 'b_v'}], 'top': RBM}
    velocity: Any     # the momentum buffer, same tree as params


def init_updown_state(key, layers) -> UpDownState:
    """Step 0 from a greedily trained stack `layers` (2 or more RBMs): the generative and
    recognition weights both start as the RBMs' own, then part ways."""
    dbn_lib.check_layers(layers)
    if len(layers) < 2:
        raise ValueError('up-down fine-tuning needs a DBN of at least 2 layers (one RBM has no '
                         'directed part to untie)')
    params = {'recognition': dbn_lib.tied_recognition(layers),
              'generative': [{'w': p['w'], 'b_v': p['b_v']} for p in layers[:-1]],
              'top': dict(layers[-1])}
    return UpDownState(step=jnp.zeros((), jnp.int32), rng=key, params=params,
                       velocity=jax.tree.map(jnp.zeros_like, params))


def generative_layers(params) -> list:
    """The fine-tuned DBN as research.models.dbn and research.evals.dbn_bound read it: the
    generative layers (each {'w', 'b_v'}), then the top RBM."""
    return [*params['generative'], params['top']]


def wake_gradient(generative, chain):
    """d/d(generative) of the batch mean of sum_l log p(h_l | h_{l+1}) at the states `chain`."""
    return jax.grad(lambda g: jnp.mean(dbn_lib.log_directed(g, chain)))(generative)


def sleep_gradient(recognition, chain):
    """d/d(recognition) of the batch mean of sum_l log q(h_{l+1} | h_l) at the states `chain`."""
    return jax.grad(lambda r: jnp.mean(dbn_lib.log_recognition(r, chain)))(recognition)


def make_updown_step(*, k: int, lr, momentum: float = 0.0, weight_decay: float = 0.0):
    """Returns the pure step(state, {'image': uint8 (B, H, W, C)}) -> (state, metrics).

    `lr` is a number or a schedule, step -> rate. Metrics: `wake_log_p`, the batch mean of
    log p(v | h_1) at the wake states (how well the generative model reconstructs the data
    from its recognised causes), and `sleep_log_q`, the mean of log q(h | v) at the sleep
    states (how well recognition inverts the generative model), both before the update.
    """
    if k < 1:
        raise ValueError(f'up-down needs k >= 1 Gibbs sweeps in the top RBM, got k={k}')
    check_sgd(lr, momentum, weight_decay)

    def step(state: UpDownState, batch):
        params = state.params
        k_bin, k_up, k_top, k_down = jax.random.split(jax.random.fold_in(state.rng, state.step),
                                                      4)
        v = jax.random.bernoulli(k_bin, pixels(batch['image'])).astype(jnp.float32)
        wake, _ = dbn_lib.sample_up(params['recognition'], v, k_up)
        top, top_v = params['top'], wake[-1]
        chain_v = run_chains(top, top_v, k_top, k, 'bernoulli')
        sleep = dbn_lib.sample_down(params['generative'], chain_v, k_down)
        grads = {'generative': wake_gradient(params['generative'], wake),
                 'recognition': sleep_gradient(params['recognition'], sleep),
                 'top': cd_gradient(top_v, rbm_lib.hidden_probs(top, top_v), chain_v,
                                    rbm_lib.hidden_probs(top, chain_v))}
        for part in ('generative', 'recognition'):
            grads[part] = [{**g, 'w': g['w'] - weight_decay * p['w']}
                           for g, p in zip(grads[part], params[part])]
        grads['top']['w'] = grads['top']['w'] - weight_decay * top['w']
        rate = lr(state.step) if callable(lr) else lr
        velocity = jax.tree.map(lambda m, g: momentum * m + rate * g, state.velocity, grads)
        metrics = {'wake_log_p': jnp.mean(dbn_lib.log_directed(params['generative'][:1],
                                                               wake[:2])),
                   'sleep_log_q': jnp.mean(dbn_lib.log_recognition(params['recognition'],
                                                                   sleep))}
        return state.replace(step=state.step + 1, params=jax.tree.map(jnp.add, params, velocity),
                             velocity=velocity), metrics

    return step
