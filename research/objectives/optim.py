"""The optimizer of the classifiers, the DBN's fine-tuning and the language models: AdamW with a
warm-up and a cosine decay. (The GAN, VAE and RBM steps use plain optax.adam or their own SGD.)"""
import jax
import optax

DECAY = ('kernels', 'matrices')


def _kernels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)


def _matrices(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def check_warmup(warmup_steps: int, steps: int, warmup_key: str = 'optim.warmup_steps',
                 steps_key: str = 'train.steps') -> None:
    """A warm-up must end before the run does: ValueError naming both config keys if not."""
    if not 0 <= warmup_steps < steps:
        raise ValueError(f'need 0 <= {warmup_key} < {steps_key}, got {warmup_steps} and {steps}')


def adamw(lr: float, steps: int, *, warmup_steps: int = 0, final_lr: float = 0.0,
          b1: float = 0.9, b2: float = 0.999, weight_decay: float = 0.0, decay: str = 'kernels',
          clip: float = 0.0):
    """AdamW with a linear warm-up from 0 to `lr` over `warmup_steps`, then a cosine decay to
    `final_lr` at `steps`. Weight decay is decoupled (Loshchilov & Hutter 2019) and never touches
    biases or norms: `decay='kernels'` applies it to Dense and Conv kernels only, 'matrices' to
    every parameter of 2 or more dimensions (embeddings and recurrent weights too, nanoGPT's
    rule). `clip` > 0 clips the gradient's global norm first.
    """
    check_warmup(warmup_steps, steps, 'warmup_steps', 'steps')
    if decay not in DECAY:
        raise ValueError(f'unknown weight decay target {decay!r}; known: {", ".join(DECAY)}')
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, steps,
                                                  end_value=final_lr)
    mask = _kernels if decay == 'kernels' else _matrices
    tx = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=mask)
    return optax.chain(optax.clip_by_global_norm(clip), tx) if clip > 0 else tx
