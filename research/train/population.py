"""Populations: N members of one model trained in one program, by `jax.vmap` over the state.

A member is a full train state (its own initialisation, random stream and, optionally, its own
learning rate); the N states are stacked along a leading axis and one jitted step advances all
of them on the same batch. On a GPU or TPU an MNIST-sized model leaves the device mostly idle,
so N members cost little more than one; on a CPU the gain is the wider matrix products.
Metrics come back as the population mean under the step's own names (what the progress line
shows) and per member as `member_i/NAME` (metrics.jsonl, TensorBoard).
"""
import jax
import jax.numpy as jnp
from absl import logging


def member_keys(seed: int, size: int) -> jax.Array:
    """PRNGKey(seed + i) for member i: member i starts as a single run with seed + i would."""
    check_size(size)
    return jnp.stack([jax.random.PRNGKey(seed + i) for i in range(size)])


def check_size(size: int) -> None:
    if size < 1:
        raise ValueError(f'population must be >= 1, got {size}')


def _injected(x) -> bool:
    """An optimizer state made by optax.inject_hyperparams (optax has two such classes)."""
    return isinstance(x, tuple) and isinstance(getattr(x, 'hyperparams', None), dict)


def with_learning_rates(states, learning_rates):
    """Member i's learning rate set to learning_rates[i] in every optimizer state of the tree
    made by optax.inject_hyperparams (one buffer each: the loop donates the state)."""
    found = [leaf for leaf in jax.tree.leaves(states, is_leaf=_injected) if _injected(leaf)]
    if not found or any('learning_rate' not in leaf.hyperparams for leaf in found):
        raise ValueError('per-member learning rates need optimizers made by '
                         'optax.inject_hyperparams(...)(learning_rate, ...)')
    rates = lambda: jnp.array(learning_rates, jnp.float32)
    return jax.tree.map(
        lambda leaf: leaf._replace(hyperparams={**leaf.hyperparams, 'learning_rate': rates()})
        if _injected(leaf) else leaf, states, is_leaf=_injected)


def init_population(init, seed: int, size: int, learning_rates=()):
    """init(key) for the loop: member i starts as a single run with seed + i would (the key the
    loop passes, PRNGKey(seed), is not used), with learning rate learning_rates[i] if given."""
    check_size(size)
    if learning_rates and len(learning_rates) != size:
        raise ValueError(f'{len(learning_rates)} learning rates for a population of {size}: '
                         'give one per member')

    logging.info('population of %d members: seeds %d..%d%s', size, seed, seed + size - 1,
                 f', learning rates {list(learning_rates)}' if learning_rates else '')

    def population_init(key):
        del key
        states = jax.vmap(init)(member_keys(seed, size))
        return with_learning_rates(states, learning_rates) if learning_rates else states

    return population_init


def make_population_step(step_fn, size: int):
    """step(stacked states, batch) -> (stacked states, metrics): every member on the batch."""
    check_size(size)
    vmapped = jax.vmap(step_fn, in_axes=(0, None))

    def step(states, batch):
        states, metrics = vmapped(states, batch)
        values = {name: jnp.mean(value) for name, value in metrics.items()}
        for i in range(size):
            values.update({f'member_{i}/{name}': value[i] for name, value in metrics.items()})
        return states, values

    return step


def member(states, i: int):
    """Member i's state out of the stacked states."""
    return jax.tree.map(lambda leaf: leaf[i], states)


def members(states, size: int) -> list[tuple[str, object]]:
    """(metric prefix, state) of each member: [('', states)] for a single run (size 1)."""
    if size == 1:
        return [('', states)]
    return [(f'member_{i}/', member(states, i)) for i in range(size)]
