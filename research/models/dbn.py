"""Deep belief networks: a stack of RBMs, as a list of their params dicts, bottom first.

Hinton, Osindero & Teh (2006). Layer l is an RBM whose visible units are the hidden units of
layer l - 1; layer 0 sees the pixels. Greedy training fits layer l to the hidden probabilities
p(h | v) that the layers below produce from the data (`up_pass`). The generative model the
stack then defines is an RBM on top (an undirected associative memory) with directed sigmoid
belief-net connections down to the pixels, so a sample is a long Gibbs chain in the top RBM
followed by one pass down through the generative weights (`generate`). The same weights read
upwards are a sigmoid MLP (`classifier_params`), the usual start for supervised fine-tuning.

As a directed model below its top RBM, layer l's (W, b_v) give p(h_l | h_{l+1}) =
Bernoulli(sigmoid(b_v + W h_{l+1})) (h_0 = v) and its (W, b_h) the recognition model
q(h_{l+1} | h_l) = Bernoulli(sigmoid(b_h + h_l W)); after up-down fine-tuning
(research/objectives/updown.py) the two are untied. `sample_up`, `sample_down`, `log_directed`
and `log_recognition` are these distributions over chains of states [v, h_1, ..., h_{L-1}].
"""
import jax
import jax.numpy as jnp

from research.models import rbm as rbm_lib
from research.numerics import bernoulli_entropy, bernoulli_log_prob


def check_layers(layers) -> None:
    """The stack fits together: layer l's visible units are layer l - 1's hidden units."""
    if not layers:
        raise ValueError('a DBN needs at least one RBM layer')
    for l in range(1, len(layers)):
        below, above = layers[l - 1]['w'].shape[1], layers[l]['w'].shape[0]
        if below != above:
            raise ValueError(f'DBN layer {l} has {above} visible units but layer {l - 1} has '
                             f'{below} hidden units')


def up_pass(layers, v):
    """p(h | v) of the top of `layers` for data v (B, V): mean-field through every layer."""
    for params in layers:
        v = rbm_lib.hidden_probs(params, v)
    return v


def generate(layers, key, *, n: int, gibbs_steps: int, snapshot_every: int = 0,
             start=None):
    """Samples of the DBN: `gibbs_steps` sweeps of the top RBM, then one pass down.

    The top chains start at `start` (n, V_top), e.g. the up-pass of some data sampled to
    binary, or else at a sample of the top RBM with its hidden units off, p(v | h = 0) (the
    base rate of its visible units). Going down, every layer but the last is sampled, as the
    directed model prescribes (the top RBM's visible units too, from one last half-sweep); the
    pixels are the means p(v = 1 | h) of layer 0, the usual way to show them.
    Returns (pixels (n, V_0), snapshots (S, n, V_0)), where snapshot s is the down pass of the
    chain after (s + 1) * snapshot_every sweeps (S = 0 if snapshot_every is 0).
    """
    check_layers(layers)
    if n < 1 or gibbs_steps < 1:
        raise ValueError(f'generate needs n >= 1 and gibbs_steps >= 1, got n={n}, '
                         f'gibbs_steps={gibbs_steps}')
    if snapshot_every and gibbs_steps % snapshot_every:
        raise ValueError(f'gibbs_steps={gibbs_steps} must be a multiple of '
                         f'snapshot_every={snapshot_every}')
    top, below = layers[-1], layers[:-1]
    k_start, k_chain, k_down = jax.random.split(key, 3)
    if start is None:
        hidden_off = jnp.zeros((n, top['b_h'].shape[0]), jnp.float32)
        start = rbm_lib.sample_visible(top, hidden_off, k_start)

    def down(v, key):
        """Top visible states -> pixel means: h ~ p(h | v) of the top RBM, then its E[v | h],
        sampled and passed down through each lower layer's p(v | h), whose mean is returned."""
        h = rbm_lib.sample_hidden(top, v, jax.random.fold_in(key, len(layers)))
        mean = rbm_lib.visible_mean(top, h)
        for l in reversed(range(len(below))):
            v = rbm_lib.draw_visible(mean, jax.random.fold_in(key, l))
            mean = rbm_lib.visible_mean(below[l], v)
        return mean

    def sweeps(v, first, last):
        return jax.lax.fori_loop(first, last, lambda j, v: rbm_lib.gibbs_step(
            top, v, jax.random.fold_in(k_chain, j))[0], v)

    if snapshot_every:
        v, tops = jax.lax.scan(
            lambda v, i: (sweeps(v, i * snapshot_every, (i + 1) * snapshot_every),) * 2,
            start, jnp.arange(gibbs_steps // snapshot_every))
        snapshots = jax.vmap(lambda t: down(t, k_down))(tops)
    else:
        v = sweeps(start, 0, gibbs_steps)
        snapshots = jnp.zeros((0, n, layers[0]['w'].shape[0]), jnp.float32)
    return down(v, k_down), snapshots


def classifier_params(layers, head) -> dict:
    """The DBN's recognition weights as `MLPClassifier(activation='sigmoid')` parameters.

    The classifier reads images x in [-1, 1] (research.data.images_to_float);
    the first RBM was trained on pixels v = (x + 1) / 2 in [0, 1]. Since
    v W + b = x (W / 2) + (b + sum_i W_i / 2), the first layer absorbs that change of scale
    exactly, and every hidden unit of the MLP computes the DBN's p(h | v). `head` is the
    classifier's own (randomly initialised) output layer, {'kernel', 'bias'}.
    """
    check_layers(layers)
    params = {}
    for l, rbm in enumerate(layers):
        kernel, bias = rbm['w'], rbm['b_h']
        if l == 0:
            kernel, bias = kernel / 2.0, bias + 0.5 * jnp.sum(kernel, axis=0)
        params[f'layers_{l}'] = {'kernel': kernel, 'bias': bias}
    params['head'] = head
    return params


def tied_recognition(layers) -> list:
    """The recognition model of a greedily trained stack: each layer below the top read up,
    [{'w', 'b_h'}] (L - 1 of them)."""
    return [{'w': p['w'], 'b_h': p['b_h']} for p in layers[:-1]]


def sample_up(recognition, v, key):
    """([v, h_1, ..., h_{L-1}] with each h_{l+1} ~ q(h_{l+1} | h_l) drawn from fold_in(key, l),
    and the sum of those conditionals' entropies (B,))."""
    chain, entropy = [v], jnp.zeros(v.shape[:-1], jnp.float32)
    for l, r in enumerate(recognition):
        logits = r['b_h'] + chain[-1] @ r['w']
        entropy = entropy + bernoulli_entropy(logits)
        chain.append(rbm_lib.draw_visible(jax.nn.sigmoid(logits), jax.random.fold_in(key, l)))
    return chain, entropy


def sample_down(generative, top_visible, key):
    """[v, h_1, ..., h_{L-1} = top_visible] with each h_l ~ p(h_l | h_{l+1}) drawn from
    fold_in(key, l); `generative` is the directed layers' [{'w', 'b_v'}]."""
    chain = [top_visible]
    for l in reversed(range(len(generative))):
        mean = rbm_lib.visible_mean(generative[l], chain[0])
        chain.insert(0, rbm_lib.draw_visible(mean, jax.random.fold_in(key, l)))
    return chain


def log_directed(generative, chain):
    """sum_l log p(h_l | h_{l+1}) of the states chain = [v, h_1, ..., h_{L-1}]: (B,)."""
    total = jnp.zeros(chain[0].shape[:-1], jnp.float32)
    for l, g in enumerate(generative):
        total = total + bernoulli_log_prob(chain[l], g['b_v'] + chain[l + 1] @ g['w'].T)
    return total


def log_recognition(recognition, chain):
    """sum_l log q(h_{l+1} | h_l) of the states chain = [v, h_1, ..., h_{L-1}]: (B,)."""
    total = jnp.zeros(chain[0].shape[:-1], jnp.float32)
    for l, r in enumerate(recognition):
        total = total + bernoulli_log_prob(chain[l + 1], r['b_h'] + chain[l] @ r['w'])
    return total
