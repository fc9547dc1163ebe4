"""Where numbers go: a progress line, `metrics.jsonl`, TensorBoard events and, with
--config.log.wandb, Weights & Biases (research.train.tracking); process 0 only.

On resume the writer drops JSONL records and TensorBoard events after the restored step, so both
describe the run that actually produced the final parameters, not a branch that was lost; and a
record written with `replace` (the loop's final hooks) takes the place of earlier values of the
same names at the same step, so rerunning a finished run's final evaluation leaves one value.
"""
import json
import math
import os
import sys
import time

import numpy as np
from tensorboardX import SummaryWriter

from research import files
from research.train import tracking
from research.train.outputs import is_writer


class MetricWriter:

    def __init__(self, workdir: str, resume_step: int = 0, enabled: bool | None = None):
        self.enabled = is_writer() if enabled is None else enabled
        self.workdir = workdir
        self.jsonl_path = os.path.join(workdir, 'metrics.jsonl')
        if not self.enabled:
            return
        files.makedirs(workdir)
        kept = self._drop_records_after(resume_step)
        # A bucket cannot append: there the file is rewritten whole at each logging step, from
        # the lines kept in memory; locally it is appended to.
        remote = files.is_url(workdir)
        self._lines = kept if remote else None
        self._jsonl = None if remote else open(self.jsonl_path, 'a', encoding='utf-8')
        # Event files are named by the second they are opened and the host: the suffix keeps a
        # run resumed within the same second from truncating the previous writer's file.
        self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'),
                                 purge_step=resume_step + 1 if resume_step else None,
                                 filename_suffix=f'.{os.getpid()}.{resume_step}')

    def _drop_records_after(self, step: int) -> list[str]:
        """Keeps the records up to `step` (a resumed run logs the later ones again)."""
        if not files.exists(self.jsonl_path):
            return []
        with files.open(self.jsonl_path) as f:
            kept = [line for line in f if line.strip() and json.loads(line)['step'] <= step]
        with files.open(self.jsonl_path, 'w') as f:
            f.writelines(kept)
        return kept

    def _rewrite(self, lines: list[str]) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = open(self.jsonl_path, 'w', encoding='utf-8')
            self._jsonl.writelines(lines)
            self._jsonl.flush()
        else:
            self._lines = lines
            with files.open(self.jsonl_path, 'w') as f:
                f.writelines(lines)

    def _forget(self, step: int, names: set) -> None:
        """Drops `names` from the records at `step`, and records left with nothing else."""
        if self._jsonl is not None:
            self._jsonl.flush()
            with open(self.jsonl_path, encoding='utf-8') as f:
                lines = f.readlines()
        else:
            lines = self._lines
        kept = []
        for line in lines:
            record = json.loads(line)
            if record['step'] == step and names & record.keys():
                record = {k: v for k, v in record.items() if k not in names}
                if not record.keys() - {'step', 'time'}:
                    continue
                line = json.dumps(record) + '\n'
            kept.append(line)
        if kept != lines:
            self._rewrite(kept)

    def scalars(self, step: int, values: dict, replace: bool = False) -> None:
        """One record of `values` at `step`; with `replace`, earlier values of the same names at
        that step are dropped first."""
        if not self.enabled:
            return
        values = {k: float(v) for k, v in values.items()}
        if replace:
            self._forget(step, set(values))
        record = {'step': step, 'time': round(time.time(), 3), **values}
        line = json.dumps(record) + '\n'
        if self._jsonl is None:
            self._lines.append(line)
            with files.open(self.jsonl_path, 'w') as f:
                f.writelines(self._lines)
        else:
            self._jsonl.write(line)
            self._jsonl.flush()
        for key, value in values.items():
            self._tb.add_scalar(key, value, step)
        tracking.scalars(self.workdir, step, values)

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """An (H, W, C) uint8 image into TensorBoard."""
        if self.enabled:
            self._tb.add_image(name, image, step, dataformats='HWC')
            tracking.image(self.workdir, step, name, image)

    def close(self) -> None:
        if self.enabled:
            if self._jsonl is not None:
                self._jsonl.close()
            self._tb.close()


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return '?'
    seconds = int(round(seconds))
    if seconds < 60:
        return f'{seconds}s'
    if seconds < 3600:
        return f'{seconds // 60}m{seconds % 60:02d}s'
    return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'


def flop_rate(flops_per_s: float) -> str:
    for unit, scale in (('PFLOP/s', 1e15), ('TFLOP/s', 1e12), ('GFLOP/s', 1e9)):
        if flops_per_s >= scale or unit == 'GFLOP/s':
            return f'{flops_per_s / scale:.3g} {unit}'


def progress_line(step: int, total: int, values: dict, rates: dict, eta_s: float) -> str:
    """`rates`: examples_per_s, and optionally flops_per_s and mfu (a fraction)."""
    parts = [f'step {step}/{total}']  # per-member values (member_i/...) are for the files only
    parts += [f'{k} {v:.4g}' for k, v in values.items() if not k.startswith('member_')]
    parts.append(f'{rates["examples_per_s"]:,.0f} ex/s')
    if 'flops_per_s' in rates:
        parts.append(flop_rate(rates['flops_per_s'])
                     + (f' ({100 * rates["mfu"]:.1f}% MFU)' if 'mfu' in rates else ''))
    parts.append(f'eta {format_duration(eta_s)}')
    return ' | '.join(parts)


class Progress:
    """On a terminal, one line redrawn in place with a bar; on a pipe, one plain line per call."""

    def __init__(self, total: int, stream=None, enabled: bool | None = None):
        self.total = total
        self.stream = stream or sys.stdout
        self.enabled = is_writer() if enabled is None else enabled
        self.tty = self.stream.isatty()

    def update(self, step: int, values: dict, rates: dict, eta_s: float) -> None:
        if not self.enabled:
            return
        line = progress_line(step, self.total, values, rates, eta_s)
        if self.tty:
            filled = int(20 * step / max(self.total, 1))
            self.stream.write(f'\r[{"#" * filled}{"." * (20 - filled)}] {line}\x1b[K')
        else:
            self.stream.write(line + '\n')
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line that must stay visible (resumption, compile time, final scores)."""
        if self.enabled:
            self.stream.write(('\n' if self.tty else '') + text + '\n')
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write('\n')
            self.stream.flush()
