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


def member_keys(seed: int, size: int) -> jax.Array:
    """PRNGKey(seed + i) for member i: member i starts as a single run with seed + i would."""
    check_size(size)
    return jnp.stack([jax.random.PRNGKey(seed + i) for i in range(size)])


def check_size(size: int) -> None:
    if size < 1:
        raise ValueError(f'population must be >= 1, got {size}')


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
