"""Checkpoints of the whole train state with orbax, so the same command resumes a run.

orbax writes each checkpoint to a temporary directory and renames it when complete, so a run
killed mid-save leaves the previous checkpoint as the latest one. Saves are asynchronous: training
continues while the arrays are written.
"""
import logging as std_logging
import os

import jax
import orbax.checkpoint as ocp
from absl import logging


class _HideOrbaxInfo:
    """orbax logs a dozen INFO lines per save through absl; keep its warnings and errors only."""

    def filter(self, record) -> bool:
        return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


logging.get_absl_logger().addFilter(_HideOrbaxInfo())


class Checkpointer:

    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                                 create=True))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state) -> None:
        self._manager.save(step, args=ocp.args.StandardSave(state))

    def restore_latest(self, like):
        """The latest checkpoint shaped, typed and sharded like `like`, or None if there is none."""
        step = self.latest_step()
        if step is None:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        logging.info('restoring checkpoint %d from %s', step, self.directory)
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
