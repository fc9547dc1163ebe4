"""K train steps per dispatch: the dataset on the device and a `lax.scan` over the steps.

Each call of a jitted step costs a dispatch from Python, which for MNIST-sized models on a GPU or
TPU can take longer than the step itself. When the dataset fits in device memory, `FusedSteps`
puts it there once (replicated on every device) and runs K steps per call: the host sends only
the (K, batch) row indices that `BatchPipeline` would have used, and the scan gathers each
step's batch on the device. The steps, their batches and their random keys are exactly those of
K single steps, so the results are the same: bit for bit on one device (tests/test_fused.py),
except where XLA fuses the step's reductions differently inside the scan (on several devices,
and the char Transformer compiled without YNNPACK), where they agree to rounding (1e-5).
"""
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from research.data import IndexedPipeline
from research.train import mesh as mesh_lib


def check_pipeline(pipeline, steps_per_dispatch: int) -> None:
    """Fused steps gather each batch on the device: the pipeline must say how (its arrays and
    indices(step), research.data.IndexedPipeline)."""
    if not isinstance(pipeline, IndexedPipeline):
        missing = [name for name in ('arrays', 'indices') if not hasattr(pipeline, name)]
        raise TypeError(f'steps_per_dispatch={steps_per_dispatch} gathers each batch on the '
                        f'device from the pipeline\'s arrays and indices(step) (research.data.'
                        f'IndexedPipeline); {type(pipeline).__name__} lacks '
                        f'{" and ".join(missing) or "them"}')


class FusedSteps:
    """compiled(state, data, indices) -> (state, metrics with a leading K axis)."""

    def __init__(self, step_fn, pipeline, mesh, steps_per_dispatch: int,
                 compiler_options: dict | None = None):
        if steps_per_dispatch < 2:
            raise ValueError(f'FusedSteps needs steps_per_dispatch >= 2, got {steps_per_dispatch}')
        check_pipeline(pipeline, steps_per_dispatch)
        self.k, self.pipeline, self.mesh = steps_per_dispatch, pipeline, mesh
        self.data = jax.device_put(pipeline.arrays, mesh_lib.replicated(mesh))
        self._index_sharding = NamedSharding(mesh, P(None, 'data'))
        batch_sharding = mesh_lib.batch_sharded(mesh)

        def fused(state, data, indices):
            def body(state, rows):
                batch = {key: jax.lax.with_sharding_constraint(value[rows], batch_sharding)
                         for key, value in data.items()}
                return step_fn(state, batch)
            return jax.lax.scan(body, state, indices)

        self._jitted = jax.jit(
            fused, in_shardings=(mesh_lib.replicated(mesh), mesh_lib.replicated(mesh),
                                 self._index_sharding),
            out_shardings=(mesh_lib.replicated(mesh), mesh_lib.replicated(mesh)),
            donate_argnums=0, compiler_options=compiler_options or None)

    def indices(self, start: int) -> jax.Array:
        """The row indices of steps start .. start + K - 1, as one (K, global batch) array."""
        local = np.stack([self.pipeline.indices(start + j) for j in range(self.k)])
        return jax.make_array_from_process_local_data(self._index_sharding,
                                                      local.astype(np.int32))

    def compile(self, state, start: int):
        """The compiled fused step, called as f(state, start) -> (state, metrics)."""
        compiled = self._jitted.lower(state, self.data, self.indices(start)).compile()
        return lambda state, start: compiled(state, self.data, self.indices(start))
