"""Checkpoints of the whole train state with orbax, so the same command resumes a run.

orbax writes each checkpoint to a temporary directory and renames it when complete, so a run
killed mid-save leaves the previous checkpoint as the latest one; `restore_latest` says so when it
sees such a leftover, and if the latest complete checkpoint cannot be read either (a disk that lost
its files) it falls back to the one before, with a warning. Saves are asynchronous: training
continues while the arrays are written.
"""
import logging as std_logging
import os

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

_TMP_MARK = '.orbax-checkpoint-tmp'  # orbax's suffix for a checkpoint still being written


class _HideOrbaxInfo:
    """orbax logs a dozen INFO lines per save through absl; keep its warnings and errors only."""

    def filter(self, record) -> bool:
        return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


logging.get_absl_logger().addFilter(_HideOrbaxInfo())


class Checkpointer:

    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = directory if '://' in directory else os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                                 create=True))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state) -> None:
        self._manager.save(step, args=ocp.args.StandardSave(state))

    def half_written(self) -> list[str]:
        """Checkpoints a killed run left unfinished (orbax's temporary directories)."""
        path = epath.Path(self.directory)
        return sorted(p.name for p in path.iterdir() if _TMP_MARK in p.name) if path.exists() \
            else []

    def restore_latest(self, like):
        """The latest readable checkpoint shaped, typed and sharded like `like`, or None if there
        is none. Half-written ones are skipped, and so is a complete one that fails to load,
        each with a warning naming it."""
        for name in self.half_written():
            logging.warning('skipping the half-written checkpoint %s in %s (a run was killed '
                            'while saving it)', name, self.directory)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        steps = sorted(self._manager.all_steps(), reverse=True)
        for i, step in enumerate(steps):
            logging.info('restoring checkpoint %d from %s', step, self.directory)
            try:
                return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
            except Exception as e:  # noqa: BLE001 -- any unreadable checkpoint: try the previous
                if i + 1 == len(steps):
                    raise RuntimeError(f'no checkpoint in {self.directory} could be restored; '
                                       f'the last error (step {step}): {e}') from e
                logging.warning('checkpoint %d in %s cannot be restored (%s: %s); falling back '
                                'to checkpoint %d', step, self.directory, type(e).__name__, e,
                                steps[i + 1])
        return None

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
