"""What a run writes into its workdir, local or in a bucket, from process 0 only.

Every process of a multi-host run executes the same hooks (their maths may span every device:
a sharded evaluation, samples drawn from replicated parameters), and exactly one of them may
write the files. `Outputs` is that one place: hooks and experiments call it on every process,
and it writes on process 0 and does nothing elsewhere, so no hook needs a guard of its own.

    out = Outputs(workdir)
    out.png('samples/step_000200.png', grid)        # -> grid, for TensorBoard too
    out.npz('samples.npz', images=images, step=np.int64(step))
    out.json('results.json', results)
    out.print('final: ...')                         # a line for the log

`save_config` writes config.json, and checks what changed when a workdir is resumed.
"""
import json
import os

import jax
import numpy as np

from research import data, files
from research.train import workdir as workdir_lib
from research.train.images import save_png


def is_writer() -> bool:
    """Whether this process writes the run's files and logs: process 0 of the run."""
    return jax.process_index() == 0


class Outputs:

    def __init__(self, workdir: str, enabled: bool | None = None):
        self.workdir = workdir
        self.enabled = is_writer() if enabled is None else enabled

    def path(self, name: str = '') -> str:
        """Where `name` (relative to the workdir; '' for the workdir) lands, as a message should
        show it."""
        return files.absolute(os.path.join(self.workdir, name) if name else self.workdir)

    def _prepare(self, name: str) -> str:
        """The file's path, its directory made."""
        path = os.path.join(self.workdir, name)
        files.makedirs(os.path.dirname(path) or '.')
        return path

    def _open(self, name: str, mode: str):
        return files.open(self._prepare(name), mode)

    def png(self, name: str, image: np.ndarray, scale: int = 2) -> np.ndarray:
        """An (H, W, 1|3) uint8 image, enlarged `scale` times; returns the image as given."""
        if self.enabled:
            save_png(self._prepare(name), image, scale=scale)
        return image

    def npz(self, name: str, **arrays) -> None:
        if self.enabled:
            with self._open(name, 'wb') as f:
                np.savez_compressed(f, **arrays)

    def json(self, name: str, value) -> None:
        """Written to a temporary file and renamed: the other processes, which read some of
        these files (a resumed run's config, vocab.json), never see half of one."""
        if self.enabled:
            path = self._prepare(name)
            with files.open(path + '.tmp', 'w') as f:
                json.dump(value, f, indent=2)
            files.replace(path + '.tmp', path)

    def text(self, name: str, text: str) -> None:
        if self.enabled:
            with self._open(name, 'w') as f:
                f.write(text)

    def bytes(self, name: str, raw: bytes) -> None:
        if self.enabled:
            with self._open(name, 'wb') as f:
                f.write(raw)

    def existing_json(self, name: str):
        """The JSON value a previous start of the run wrote to `name`, or None (every process
        reads it: a resumed run checks what it started with)."""
        path = os.path.join(self.workdir, name)
        if not files.exists(path):
            return None
        with files.open(path) as f:
            return json.load(f)

    def print(self, text: str) -> None:
        """A line that must reach the log (final numbers, a sample): once, not once per host."""
        if self.enabled:
            print(text, flush=True)


def save_config(config, workdir: str) -> dict:
    """Writes workdir/config.json, with `data_used`: what served each dataset loaded so far
    (research.data.loaded(), so call it after loading). On a resumed workdir it first compares
    the config with the one saved there (research.train.workdir.check_resume, on every process):
    a change that would alter what the checkpoints mean stops the run before anything is
    written, others are warned about (on process 0). Returns {key: (old, new)} of the changes."""
    new = json.loads(config.to_json())
    if data.loaded():
        new['data_used'] = data.loaded()
    out = Outputs(workdir)
    old = out.existing_json('config.json')
    changed = {}
    if old is not None:
        changed = workdir_lib.check_resume(old, new, workdir, warn=is_writer())
    out.json('config.json', new)
    return changed

