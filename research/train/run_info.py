"""What ran, where and when: `workdir/run_info.json` gets one record per (re)start of a run.

A resumed run may land on another machine, another jax or another commit, and its wall time is
the sum of its segments, not last record minus first; so every start appends a record (its time,
the step it starts from, the command, the code and the hardware) and nothing is overwritten.
`research.report` reads it back. Only process 0 writes.
"""
import collections
import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata

import jax

from research import data, files
from research.train.outputs import Outputs, is_writer

FILENAME = 'run_info.json'
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    """The 'model name' of /proc/cpuinfo (Linux); platform.processor() elsewhere, or None."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gib() -> float | None:
    try:
        with open('/proc/meminfo', encoding='utf-8') as f:
            for line in f:
                if line.startswith('MemTotal:'):
                    return round(int(line.split()[1]) / 2**20, 1)  # the file counts KiB
    except (OSError, ValueError, IndexError):
        pass
    return None


def git_commit(directory: str = _REPO) -> str | None:
    """HEAD of the repository holding this code; None outside git, without git, or on timeout."""
    try:
        result = subprocess.run(['git', '-C', directory, 'rev-parse', 'HEAD'],
                                capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def git_dirty(directory: str = _REPO) -> bool | None:
    """Whether tracked files differ from HEAD (the run's code is not exactly its commit's)."""
    try:
        result = subprocess.run(['git', '-C', directory, 'status', '--porcelain',
                                 '--untracked-files=no'], capture_output=True, text=True,
                                timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(result.stdout.strip()) if result.returncode == 0 else None


def collect(step: int | None = None) -> dict:
    """This process's view of the run: the record that `write_run_info` appends."""
    devices = jax.devices()
    now = time.time()
    return {
        'time': round(now, 3),
        'time_utc': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now)),
        'step': step,
        'argv': list(sys.argv),
        'cwd': os.getcwd(),
        'hostname': socket.gethostname(),
        'platform': platform.platform(),
        'python': platform.python_version(),
        'versions': {name: _version(name) for name in ('jax', 'jaxlib', 'flax', 'optax')},
        'backend': jax.default_backend(),
        'device_kinds': dict(collections.Counter(d.device_kind for d in devices)),
        'device_count': len(devices),
        'local_device_count': jax.local_device_count(),
        'process_count': jax.process_count(),
        'cpu_model': _cpu_model(),
        'cpu_count': os.cpu_count(),
        'cpus_usable': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else None,
        'memory_gib': _memory_gib(),
        'git_commit': git_commit(),
        'git_dirty': git_dirty(),
        'data': data.loaded(),  # what served each dataset: source, where, examples
    }


def read_run_info(workdir: str) -> list[dict] | None:
    """The start records of workdir/run_info.json, oldest first; None if the file is absent."""
    path = os.path.join(workdir, FILENAME)
    if not files.exists(path):
        return None
    with files.open(path) as f:
        try:
            info = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f'{path} is not valid JSON (line {e.lineno}): {e.msg}') from None
    starts = info.get('starts') if isinstance(info, dict) else None
    if not isinstance(starts, list) or not all(
            isinstance(s, dict) and isinstance(s.get('time'), (int, float)) for s in starts):
        raise ValueError(f'{path} should hold {{"starts": [...]}}, one record with a "time" per '
                         'start')
    return starts


def write_run_info(workdir: str, step: int | None = None) -> dict | None:
    """Appends this start's record to workdir/run_info.json (process 0); returns the record.

    Outputs.json writes it to a temporary file and renames it, so a kill never leaves half a
    file behind.
    """
    if not is_writer():
        return None
    record = collect(step)
    Outputs(workdir).json(FILENAME, {'starts': (read_run_info(workdir) or []) + [record]})
    return record
