"""Multi-process (multi-host) runs: JAX's multi-controller runtime, started when asked.

Every host of a Cloud TPU VM slice (or a GPU cluster) runs the same command; with
DEEPGEN_DISTRIBUTED=1 in the environment each calls `jax.distributed.initialize()` first, which
finds the coordinator and its own rank from the TPU/cluster environment. The global mesh then
spans all processes' devices, each process feeds only its own rows of every batch
(`research.data.BatchPipeline`), only process 0 writes logs, TensorBoard and pictures, and orbax
saves checkpoints collectively.

Anywhere else (e.g. two processes on one machine, as the tests do) name the cluster yourself:
DEEPGEN_COORDINATOR=host:port, DEEPGEN_NUM_PROCESSES=N and DEEPGEN_PROCESS_ID=i. On CPUs the
cross-process collectives go through gloo.
"""
import os

import jax
from absl import logging

ENV = 'DEEPGEN_DISTRIBUTED'
_EXPLICIT = ('DEEPGEN_COORDINATOR', 'DEEPGEN_NUM_PROCESSES', 'DEEPGEN_PROCESS_ID')


def requested(environ=None) -> bool:
    value = (os.environ if environ is None else environ).get(ENV, '').strip().lower()
    if value not in ('', '0', 'false', '1', 'true'):
        raise ValueError(f'{ENV} must be 1/true or 0/false, got {value!r}')
    return value in ('1', 'true')


def cluster_args(environ=None) -> dict:
    """jax.distributed.initialize's arguments from DEEPGEN_COORDINATOR etc., or {} (auto-detect)
    when none is set; some but not all of them is an error naming the missing ones."""
    environ = os.environ if environ is None else environ
    given = {name: environ[name] for name in _EXPLICIT if environ.get(name)}
    if not given:
        return {}
    missing = [name for name in _EXPLICIT if name not in given]
    if missing:
        raise ValueError(f'{", ".join(given)} set but not {", ".join(missing)}: name all three '
                         'or none (auto-detection on TPU VMs and SLURM)')
    try:
        num, rank = int(given['DEEPGEN_NUM_PROCESSES']), int(given['DEEPGEN_PROCESS_ID'])
    except ValueError:
        raise ValueError(f'DEEPGEN_NUM_PROCESSES and DEEPGEN_PROCESS_ID must be integers, got '
                         f'{given["DEEPGEN_NUM_PROCESSES"]!r} and '
                         f'{given["DEEPGEN_PROCESS_ID"]!r}') from None
    if not 0 <= rank < num:
        raise ValueError(f'need 0 <= DEEPGEN_PROCESS_ID < DEEPGEN_NUM_PROCESSES, got {rank} and '
                         f'{num}')
    return {'coordinator_address': given['DEEPGEN_COORDINATOR'], 'num_processes': num,
            'process_id': rank}


def initialize_if_requested() -> None:
    """Call before anything touches a JAX backend (experiment_main does)."""
    if not requested():
        return
    args = cluster_args()
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU backends only
    jax.distributed.initialize(**args)
    logging.info('process %d of %d, %d local of %d devices', jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
