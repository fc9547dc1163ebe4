"""Greedy layer-wise DBN training: contrastive divergence on one layer, the layers below frozen.

Layer l of a deep belief network is an RBM trained on what the trained layers 0..l-1 make of the
data: their hidden probabilities, passed up by mean field (`research.models.dbn.up_pass`), as in
Hinton, Osindero & Teh (2006). The step below does that pass inside the jitted step, from the
same uint8 image batches for every layer, so a layer costs one more product per layer beneath
it and no (N, H) array of features is ever stored, and the pixels can be binarized afresh for
every batch (a new draw each step) without the layers above seeing a fixed sample.

`init_layer_state` starts a layer from the base rate of what it will see; `init_finetune_state`
turns the trained stack into the sigmoid MLP that fine-tuning starts from.
"""
import jax
import jax.numpy as jnp

from research.models import dbn as dbn_lib
from research.models import rbm as rbm_lib
from research.objectives.classifier import init_classifier_state
from research.objectives.rbm import init_rbm_state, make_cd_step
from research.objectives.state import TrainState

_BINARIZE = 1  # fold_in stream of the pixel draws; CD's own keys come from split(fold_in(...))


def pixels(images):
    """uint8 (B, H, W, C) -> float32 (B, H*W*C) in [0, 1]: grey levels as probabilities."""
    return images.reshape(images.shape[0], -1).astype(jnp.float32) / 255.0


def init_layer_state(key, layer: int, sizes, marginals, *, n_chains: int):
    """Layer `layer`'s RBM (sizes[layer] visible, sizes[layer + 1] hidden units) at step 0:
    weights from fold_in(key, layer), visible biases at the base rate of `marginals` (the mean of
    the data the layer will see: the up-passed training pixels), and `n_chains` persistent
    chains."""
    key = jax.random.fold_in(key, layer)
    params = rbm_lib.init_rbm(key, sizes[layer], sizes[layer + 1],
                              visible_bias=rbm_lib.marginal_bias(marginals))
    return init_rbm_state(jax.random.fold_in(key, 1), params, n_chains=n_chains)


def init_finetune_state(key, model, tx, image_shape, layers) -> TrainState:
    """The classifier state that fine-tuning starts from: `model` (a sigmoid MLPClassifier of
    the DBN's sizes) initialised at random, then, given `layers`, every hidden layer set to the
    DBN's recognition weights (research.models.dbn.classifier_params) and `tx` started anew."""
    state = init_classifier_state(key, model, tx, image_shape)
    if not layers:
        return state
    params = dbn_lib.classifier_params(layers, state.params['head'])
    return state.replace(params=params, opt_state=tx.init(params))


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
