"""Greedy layer-wise DBN training: contrastive divergence on one layer, the layers below frozen.

Layer l of a deep belief network is an RBM trained on what the trained layers 0..l-1 make of the
data: their hidden probabilities, passed up by mean field (`research.models.dbn.up_pass`), as in
Hinton, Osindero & Teh (2006). The step below does that pass inside the jitted step, from the
same uint8 image batches for every layer, so a layer costs one more product per layer beneath
it and no (N, H) array of features is ever stored, and the pixels can be binarized afresh for
every batch (a new draw each step) without the layers above seeing a fixed sample.
"""
import jax
import jax.numpy as jnp

from research.models import dbn as dbn_lib
from research.objectives.rbm import make_cd_step

_BINARIZE = 1  # fold_in stream of the pixel draws; CD's own keys come from split(fold_in(...))


def pixels(images):
    """uint8 (B, H, W, C) -> float32 (B, H*W*C) in [0, 1]: grey levels as probabilities."""
    return images.reshape(images.shape[0], -1).astype(jnp.float32) / 255.0


def make_layer_step(lower_layers, *, binarize: bool, **cd_kwargs):
    """step(state, {'image': uint8 (B, H, W, C)}) -> (state, metrics) for the RBM above
    `lower_layers` (a list of trained layers' params, possibly empty).

    With `binarize` each pixel is drawn 0/1 with probability grey/255, fresh per step from
    fold_in(fold_in(state.rng, state.step), 1); else the grey levels are used as they are.
    `cd_kwargs` go to `make_cd_step` (k, persistent, lr, momentum, weight_decay).
    """
    if lower_layers:
        dbn_lib.check_layers(lower_layers)
    cd_step = make_cd_step(**cd_kwargs)

    def step(state, batch):
        v = pixels(batch['image'])
        if binarize:
            key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), _BINARIZE)
            v = jax.random.bernoulli(key, v).astype(jnp.float32)
        if lower_layers:
            v = dbn_lib.up_pass(lower_layers, v)
        return cd_step(state, {'v': v})

    return step
