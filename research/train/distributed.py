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

A process that dies without warning (SIGKILL, a lost host) is declared dead by JAX's distributed
service once it has sent no heartbeat for $DEEPGEN_HEARTBEAT_TIMEOUT_S seconds (default 100); the
service then names it and stops the others, so nobody hangs on a collective forever.
"""
import os

import jax
from absl import logging

ENV = 'DEEPGEN_DISTRIBUTED'
_EXPLICIT = ('DEEPGEN_COORDINATOR', 'DEEPGEN_NUM_PROCESSES', 'DEEPGEN_PROCESS_ID')
HEARTBEAT_ENV = 'DEEPGEN_HEARTBEAT_TIMEOUT_S'
HEARTBEAT_TIMEOUT_S = 100  # JAX's default: a process silent this long is declared dead


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


def heartbeat_timeout(environ=None) -> int:
    """Seconds after which the others give up on a process that stopped answering (killed,
    its host lost): $DEEPGEN_HEARTBEAT_TIMEOUT_S, default JAX's 100."""
    value = (os.environ if environ is None else environ).get(HEARTBEAT_ENV, '').strip()
    if not value:
        return HEARTBEAT_TIMEOUT_S
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f'{HEARTBEAT_ENV} must be a whole number of seconds >= 1, got {value!r}')
    return int(value)


def initialize_if_requested() -> None:
    """Call before anything touches a JAX backend (experiment_main does)."""
    if not requested():
        return
    args = cluster_args()
    args['heartbeat_timeout_seconds'] = heartbeat_timeout()
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU backends only
    jax.distributed.initialize(**args)
    logging.info('process %d of %d, %d local of %d devices', jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def lost_peer_message(error: Exception) -> str:
    """The FATAL line of a process whose collective failed: another process died (killed, its host
    lost) or cannot be reached. JAX's distributed service then names the silent process, once it
    has missed heartbeats for heartbeat_timeout() s, and stops this one."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (f'FATAL process {jax.process_index()} of {jax.process_count()}: a collective failed, '
            f'so another process has died or lost its network ({first}). JAX\'s distributed '
            f'service names it after {heartbeat_timeout()} s without heartbeats '
            f'(${HEARTBEAT_ENV}) and stops this process; rerun every process with the same '
            'command to resume from the last complete checkpoint')
