"""Checkpoints of the whole train state with orbax, verified on restore, so the same command
resumes a run.

Each checkpoint holds two orbax items: `state` (the arrays) and `digest` (the shape, dtype and
sha256 of every array, taken from the state in memory when it was saved). orbax checks no
checksum of array data (zarr3's crc32c covers only a shard's index), so `restore_latest`
recomputes the digest of what it read and compares:

  * a checkpoint whose files are damaged (unreadable, or arrays that differ from their digest) is
    moved aside to CHECKPOINTS.damaged/STEP with a warning naming it and why, and the one before
    is tried; with none intact the run stops (NoIntactCheckpointError);
  * a checkpoint of another state (the digest's shapes differ from what this config builds)
    stops the run (CheckpointMismatchError): that is a changed config, not damage;
  * a checkpoint still being written when the run was killed (orbax writes to a temporary
    directory and renames it when complete) is skipped with a warning;
  * a save for which the disk lacks space stops the run (DiskFullError) before writing, or when
    orbax's write fails for it (another writer filled the disk), and leaves the previous
    checkpoint as the latest one.

Saves are asynchronous: training continues while the arrays are written. Checkpoints written
before digests existed (one `default` item) restore unverified, with a warning.

Where every device is a CPU, each array is written whole from its first replica instead of a
slice from each replica (orbax's replica-parallel default, kept on accelerators): slicing
compiled one small program per array and replica at a run's first save (on 8 CPU devices: 136
programs and 4.9 s for the flow smoke run, 80 and 4.4 s for the GAN's, 2.4 s for the DBN's, on
2 cores of a Zen 3 EPYC), and bought nothing, since CPU replicas share one host's memory.
"""
import hashlib
import logging as std_logging
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from research import files
from research.errors import DiskFullError, Fatal, UserError, is_disk_full

_TMP_MARK = '.orbax-checkpoint-tmp'  # orbax's suffix for a checkpoint still being written
_ITEMS = ('state', 'digest')
_MARGIN = 1 << 20  # metadata and the digest, beyond the arrays themselves


class _HideOrbaxInfo:
    """orbax logs a dozen INFO lines per save through absl; keep its warnings and errors only."""

    def filter(self, record) -> bool:
        return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


logging.get_absl_logger().addFilter(_HideOrbaxInfo())


class CheckpointMismatchError(UserError):
    """The checkpoint holds another state than the one this config builds."""


class NoIntactCheckpointError(Fatal):
    """Every checkpoint of the run is damaged."""


class _Damaged(Exception):
    """A checkpoint that cannot be used as it is (the message says why)."""


def _host_array(x) -> np.ndarray:
    """The whole value of a (possibly multi-process) array on this host."""
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _leaves(tree) -> list[tuple[str, list[int], str]]:
    """(path, shape, dtype) of each leaf: what a digest's structure is compared on."""
    return [(jax.tree_util.keystr(path), list(np.shape(x)), str(x.dtype))
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


_KEY = re.compile(r"\.(\w+)|\['([^']*)'\]|\[(\d+)\]")


def leaf_name(path: str) -> str:
    """A digest's path ("`.params['Dense_0']['kernel']`") as a slash name
    ('params/Dense_0/kernel'), the same for a state and for the dicts orbax restores it as."""
    return '/'.join(next(part for part in m.groups() if part is not None)
                    for m in _KEY.finditer(path))


def named_leaves(tree) -> dict:
    """{slash name: leaf} of every array in `tree`."""
    return {leaf_name(jax.tree_util.keystr(path)): x
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def digest(tree) -> dict:
    """{'leaves': [[path, shape, dtype, sha256 of the bytes], ...]} of every array in `tree`."""
    rows = []
    for (path, shape, dtype), x in zip(_leaves(tree), jax.tree.leaves(tree)):
        value = np.ascontiguousarray(_host_array(x)).reshape(-1).view(np.uint8)
        rows.append([path, shape, dtype, hashlib.sha256(value).hexdigest()])
    return {'format': 1, 'leaves': rows}


def structure_difference(recorded: dict, like) -> str | None:
    """What differs between a digest's leaves and those of `like` (up to three), or None."""
    have = {path: (shape, dtype) for path, shape, dtype, *_ in recorded['leaves']}
    want = {path: (shape, dtype) for path, shape, dtype in _leaves(like)}
    diffs = [f'{p} {have[p][0]} {have[p][1]} -> {want[p][0]} {want[p][1]}'
             for p in want if p in have and have[p] != want[p]]
    diffs += [f'{p} is not in it' for p in want if p not in have]
    diffs += [f'{p} is not in this config\'s state' for p in have if p not in want]
    if not diffs:
        return None
    return '; '.join(diffs[:3]) + (f' (and {len(diffs) - 3} more)' if len(diffs) > 3 else '')


def write_whole_arrays_on_cpu() -> None:
    """Registers orbax's array handler without replica-parallel writes when every device is a
    CPU (see the module's docstring), once per process."""
    if jax.default_backend() != 'cpu':
        return
    handler = ocp.type_handlers.get_type_handler(jax.Array)
    if getattr(handler, '_use_replica_parallel', True):
        # the same per-host array metadata as orbax's default handler keeps
        store = getattr(handler, '_array_metadata_store', None)
        ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(
            use_replica_parallel=False, array_metadata_store=store), override=True)


class Checkpointer:

    def __init__(self, directory: str, max_to_keep: int = 3):
        write_whole_arrays_on_cpu()
        self.directory = directory if files.is_url(directory) else os.path.abspath(directory)
        self._options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self._manager = self._open()
        # the newest checkpoint known good: restored and verified, or saved by this run
        self.verified_step, self._pending = None, None

    def _open(self):
        return ocp.CheckpointManager(self.directory, options=self._options, item_names=_ITEMS)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def _kept(self, step: int) -> str:
        previous = [s for s in self._manager.all_steps() if s != step]
        return (f'checkpoint {max(previous)} is intact and the run resumes from it' if previous
                else 'no earlier checkpoint exists')

    def _check_space(self, step: int, state) -> None:
        """Refuses a save that cannot fit (local disks): better than orbax failing mid-write."""
        if files.is_url(self.directory):
            return
        need = sum(getattr(x, 'nbytes', 0) for x in jax.tree.leaves(state)) + _MARGIN
        free = shutil.disk_usage(self.directory).free
        if free < need:
            raise DiskFullError(f'not enough space on the device of {self.directory} for '
                                f'checkpoint {step}: it needs up to {need / 2**20:.1f} MiB and '
                                f'{free / 2**20:.1f} MiB are free; {self._kept(step)}: free some '
                                'space and run the same command again')

    def save(self, step: int, state) -> None:
        """Starts writing checkpoint `step` (after the previous save finished)."""
        self.wait()
        self._check_space(step, state)
        try:
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), digest=ocp.args.JsonSave(digest(state))))
        except Exception as e:  # noqa: BLE001 -- only a full disk is translated
            if is_disk_full(e):
                raise self._disk_full(step, e) from e
            raise
        self._pending = step

    def _disk_full(self, step: int, error: BaseException) -> DiskFullError:
        return DiskFullError(f'no space left on the device of {self.directory} while saving '
                             f'checkpoint {step} ({type(error).__name__}); {self._kept(step)}: '
                             'free some space and run the same command again')

    def wait(self) -> None:
        """Waits for the save in flight; a failed save raises here (DiskFullError if for lack
        of space), a finished one becomes `verified_step`."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 -- only a full disk is translated
            if is_disk_full(e):
                raise self._disk_full(self._pending, e) from e
            raise
        if self._pending is not None:
            self.verified_step, self._pending = self._pending, None

    def half_written(self) -> list[str]:
        """Checkpoints a killed run left unfinished (orbax's temporary directories)."""
        path = epath.Path(self.directory)
        return sorted(p.name for p in path.iterdir() if _TMP_MARK in p.name) if path.exists() \
            else []

    def _restore(self, step: int, abstract, like):
        """The state of checkpoint `step`, verified against its digest."""
        step_dir = epath.Path(self.directory) / str(step)
        if not (step_dir / 'digest').exists():
            if not (step_dir / 'default').exists():
                raise _Damaged('it holds neither a state with a digest nor an older state')
            logging.warning('checkpoint %d in %s has no digest (deepgen wrote none before '
                            'checkpoints were verified): restoring it unverified', step,
                            self.directory)
            with ocp.StandardCheckpointer() as legacy:
                return legacy.restore(step_dir / 'default', abstract)
        try:
            recorded = self._manager.restore(step, args=ocp.args.Composite(
                digest=ocp.args.JsonRestore()))['digest']
            recorded['leaves'] = [list(row) for row in recorded['leaves']]
        except Exception as e:  # noqa: BLE001 -- an unreadable digest is damage
            raise _Damaged(f'its digest cannot be read ({type(e).__name__}: {e})') from e
        difference = structure_difference(recorded, like)
        if difference is not None:
            raise CheckpointMismatchError(
                f'checkpoint {step} in {self.directory} holds another state than this config '
                f'builds: {difference}. Resume with the config it was trained with (the '
                'workdir\'s config.json), or start a new run with another --workdir')
        try:
            state = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract)))['state']
        except Exception as e:  # noqa: BLE001 -- unreadable arrays are damage
            raise _Damaged(f'its arrays cannot be read ({type(e).__name__}: '
                           f'{str(e).splitlines()[0][:200]})') from e
        computed = digest(state)['leaves']
        bad = [row[0] for row, now in zip(recorded['leaves'], computed) if row[3] != now[3]]
        if bad:
            raise _Damaged(f'{len(bad)} of its {len(recorded["leaves"])} arrays differ from '
                           f'their digest ({", ".join(bad[:3])}{", ..." if len(bad) > 3 else ""})')
        return state

    def _move_aside(self, step: int) -> str:
        """Moves a damaged checkpoint out of the manager's directory (process 0) so a new save
        of that step can be made; returns where it went."""
        target = epath.Path(self.directory + '.damaged') / str(step)
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                target = target.parent / f'{step}.{len(list(target.parent.iterdir()))}'
            (epath.Path(self.directory) / str(step)).rename(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f'moved aside checkpoint {step}')
        self._manager.reload()
        return str(target)

    def read(self, step: int | None = None) -> tuple[int, dict]:
        """(step, {slash name: numpy array}) of checkpoint `step` (default the newest), read as
        saved, with no state to shape it (another run's, for research.train.transfer), and
        verified against its digest. A missing step or a damaged checkpoint is a UserError
        naming it."""
        steps = sorted(self._manager.all_steps())
        if step is None and not steps:
            raise UserError(f'{self.directory} holds no checkpoint')
        step = steps[-1] if step is None else step
        if step not in steps:
            raise UserError(f'{self.directory} has no checkpoint {step}; it has '
                            f'{", ".join(map(str, steps)) or "none"}')
        try:
            recorded = self._manager.restore(step, args=ocp.args.Composite(
                digest=ocp.args.JsonRestore()))['digest']
            raw = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore()))['state']
        except Exception as e:  # noqa: BLE001 -- unreadable files are the source's damage
            raise UserError(f'checkpoint {step} in {self.directory} cannot be read '
                            f'({type(e).__name__}: {str(e).splitlines()[0][:200]})') from e
        arrays = {name: np.asarray(x) for name, x in named_leaves(raw).items()}
        computed = {leaf_name(row[0]): row[3] for row in digest(arrays)['leaves']}
        bad = [leaf_name(path) for path, _, _, sha in recorded['leaves']
               if computed.get(leaf_name(path)) != sha]
        if bad:
            raise UserError(f'checkpoint {step} in {self.directory} is damaged: {len(bad)} '
                            f'arrays differ from their digest ({", ".join(bad[:3])})')
        return step, arrays

    def restore_latest(self, like):
        """The newest intact checkpoint, shaped, typed and sharded like `like`, or None if there
        is none. Half-written ones are skipped and damaged ones moved aside, each with a
        warning naming it and why."""
        for name in self.half_written():
            logging.warning('skipping the half-written checkpoint %s in %s (a run was killed '
                            'while saving it)', name, self.directory)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        damaged = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            logging.info('restoring checkpoint %d from %s', step, self.directory)
            try:
                state = self._restore(step, abstract, like)
            except _Damaged as e:
                where = self._move_aside(step)
                logging.warning('checkpoint %d in %s is damaged: %s; moved it to %s and trying '
                                'the one before', step, self.directory, e, where)
                damaged.append(f'{step} ({e})')
                continue
            self.verified_step = step
            return state
        if damaged:
            raise NoIntactCheckpointError(
                f'no intact checkpoint in {self.directory}: {"; ".join(damaged)}. They were '
                f'moved to {self.directory}.damaged; run the same command to start this run '
                'from step 0, or use another --workdir')
        return None

    def close(self) -> None:
        self._manager.close()
