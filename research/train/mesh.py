"""Data parallelism: one `data` mesh axis over every device of every process.

The train state is replicated and the batch is split along its first axis; `jax.jit` with these
shardings does the rest (XLA inserts the gradient all-reduce). The same code runs on one CPU, a
GPU host or a multi-host TPU slice, where each process feeds only its own rows of the batch.
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from research.errors import ConfigError


def data_mesh(devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P('data'))


def check_batch_size(global_batch: int, mesh: 'Mesh | int', name: str = 'batch size') -> None:
    """A global batch splits evenly over the devices of the data mesh (or `mesh` devices)."""
    devices = mesh if isinstance(mesh, int) else mesh.size
    if global_batch % devices:
        raise ConfigError(f'{name} {global_batch} must divide evenly over the {devices} devices '
                          f'of the data mesh; choose a multiple of {devices}')


def to_global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """This process's rows (numpy) -> one global jax.Array per key, sharded over `data`."""
    sharding = batch_sharded(mesh)
    return {key: jax.make_array_from_process_local_data(sharding, value)
            for key, value in local_batch.items()}


def from_global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A numpy array that every process holds whole -> a jax.Array with `sharding`, each process
    placing only the pieces its own devices hold (jax.device_put cannot place rows on other
    processes' devices)."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def jit_step(step_fn, mesh: Mesh, compiler_options: dict | None = None):
    """jit a step(state, batch) -> (state, metrics): state replicated and donated, batch split;
    `compiler_options` are XLA's, for this program alone (research.xla_flags.without_ynnpack)."""
    return jax.jit(step_fn, in_shardings=(replicated(mesh), batch_sharded(mesh)),
                   out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0,
                   compiler_options=compiler_options or None)
