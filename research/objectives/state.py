"""The train state of every step family with one set of parameters and one optimizer: the VAE,
the classifiers and the language models (the GAN and the RBM carry more, see gan.py, rbm.py)."""
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    step: jax.Array   # completed train steps, int32
    rng: jax.Array    # base key; step k uses fold_in(rng, k)
    params: Any
    opt_state: Any


def init_train_state(key, model, tx, *example_inputs, **init_kwargs) -> TrainState:
    """Step 0: `model.init` on example inputs (their shapes only matter), `tx` initialised."""
    k_init, k_rng = jax.random.split(key)
    params = model.init(k_init, *example_inputs, **init_kwargs)['params']
    return TrainState(step=jnp.zeros((), jnp.int32), rng=k_rng, params=params,
                      opt_state=tx.init(params))


def count_params(params) -> int:
    """How many numbers a parameter tree holds (arrays or jax.ShapeDtypeStructs)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
