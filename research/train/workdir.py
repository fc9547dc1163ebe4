"""One run per workdir, and what a resumed run may change.

    with workdir.hold(path):     # the lock: a second run on `path` stops at once, naming this one
        ...                      # (research.train.cli takes it around every experiment)
    workdir.check_resume(old, new, path)   # save_config: a changed config meets its old workdir

The lock is `WORKDIR/run.lock`, a JSON record of its holder (process id, host, command, start
and a heartbeat rewritten every 30 s), taken by process 0 of a run and removed on exit. On a
local filesystem it is also an flock, which the kernel releases when the holder dies, so a lock
left by a killed process is taken over at once on the same host; elsewhere (a bucket, another
host) a lock whose heartbeat is older than DEEPGEN_LOCK_STALE_S (default 120 s) is stale.

`ON_RESUME` is the table of config keys: those a resumed run may change (a warning) and those
that change what the checkpoints hold or mean (refused, before anything is written).
"""
import contextlib
import datetime
import fnmatch
import json
import os
import socket
import sys
import threading
import time

import jax
import numpy as np
from absl import logging

from research import files
from research.errors import UserError, is_disk_full

LOCK = 'run.lock'
HEARTBEAT_S = 30.0

SAFE, STATE = 'safe', 'state'
# The first pattern matching a flattened config key decides. SAFE: how long, how often, how it
# is evaluated or exported, and where the data is read from; a resumed run warns about these.
# STATE: what the checkpoints hold or mean (shapes, optimizer, data, randomness, schedule of an
# earlier phase); a resumed run with another value stops. A key no pattern names counts as STATE
# (tests/test_workdir.py checks that every key of every preset is named).
ON_RESUME = (
    ('preset', SAFE),  # a name: its values are compared key by key
    ('train.steps', SAFE), ('train.*_every', SAFE), ('train.steps_per_dispatch', SAFE),
    ('train.max_to_keep', SAFE), ('finetune.steps', SAFE),  # the DBN's last phase: how long
    ('eval.*', SAFE), ('scores.*', SAFE), ('export.*', SAFE), ('export_judge', SAFE),
    ('sample.*', SAFE), ('ais.*', SAFE), ('bound.*', SAFE),
    ('profile', SAFE), ('log.*', SAFE),  # what is recorded about the run, and where
    ('train.precision', SAFE),  # the state stays float32: a resume may switch (with a warning)
    ('data.data_dir', SAFE), ('data.train_dir', SAFE), ('data.test_dir', SAFE),
    ('data.path', SAFE), ('data.source', SAFE), ('data.test_split', SAFE),
    ('data_used.*.source', SAFE), ('data_used.*.where', SAFE),  # the same data from elsewhere
    ('seed', STATE), ('data.*', STATE), ('data_used.*', STATE), ('model.*', STATE),
    ('loss.*', STATE), ('objective.*', STATE), ('optim.*', STATE), ('population', STATE),
    ('population_lr', STATE), ('ema_decay', STATE), ('train.batch_size', STATE),
    ('train.augment', STATE), ('dbn.*', STATE), ('rbm.*', STATE), ('finetune.*', STATE),
    ('updown.*', STATE),  # its steps too: the learning rate decays linearly over them
    ('init_from', STATE), ('init_partial', STATE),  # what the first checkpoint started from
)


def kind_of(key: str) -> tuple[str, str | None]:
    """(SAFE or STATE, the ON_RESUME pattern that decided; None if none did)."""
    for pattern, kind in ON_RESUME:
        if fnmatch.fnmatchcase(key, pattern):
            return kind, pattern
    return STATE, None


def flatten(tree, prefix: str = '') -> dict:
    """A config.json value as {dotted key: leaf}; data_used's list as data_used.DATASET/SPLIT.*."""
    flat = {}
    for key, value in tree.items():
        if key == 'data_used' and isinstance(value, list):
            value = {f'{e.get("dataset")}/{e.get("split", "")}'.rstrip('/'): e for e in value}
        if isinstance(value, dict):
            flat.update(flatten(value, f'{prefix}{key}.'))
        else:
            flat[f'{prefix}{key}'] = value
    return flat


def _as_flag(key: str, value) -> str:
    if isinstance(value, (list, tuple)):
        value = '(' + ','.join(map(str, value)) + (',)' if len(value) == 1 else ')')
    return f'--config.{key}={value}'


def check_resume(old: dict, new: dict, workdir: str, warn: bool = True) -> dict:
    """Compares the config a workdir was started with (`old`, its config.json) with this one:
    warns about SAFE changes and about keys one side lacks (a newer or older deepgen), raises a
    UserError naming every STATE key that changed. Returns {key: (old, new)} of all changes;
    `warn`=False checks without logging (the processes of a run but the first)."""
    old, new = flatten(old), flatten(new)
    changed = {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
               if old.get(k) != new.get(k)}
    refused = {k: v for k, v in changed.items()
               if k in old and k in new and kind_of(k)[0] == STATE}
    if refused:
        what = '; '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in refused.items())
        back = ' '.join(_as_flag(k, a) for k, (a, _) in refused.items()
                        if not k.startswith('data_used.'))
        raise UserError(
            f'{files.absolute(workdir)} was started with another config, and its checkpoints '
            f'hold what that config trained; changed: {what}. Either start a new run with '
            f'another --workdir, or resume this one with its values'
            + (f' ({back})' if back else ' (the data it was started with)'))
    for key, (was, now) in changed.items() if warn else ():
        if key not in old:
            note = 'not recorded when this workdir was started'
        elif key not in new:
            note = 'no longer in the config'
        else:
            note = 'changed since this workdir was started'
        logging.warning('config.%s %s: %r -> %r', key, note, was, now)
    return changed


def check_started_config(config, workdir: str) -> None:
    """check_resume before any data is loaded: the config's own keys against the config.json
    the workdir was started with (save_config compares the data used, once it is loaded)."""
    path = os.path.join(workdir, 'config.json')
    if not files.exists(path):
        return
    try:
        with files.open(path) as f:
            old = json.load(f)
    except ValueError as e:
        raise UserError(f'{files.absolute(path)} is not valid JSON ({e}); it records the config '
                        'this workdir was started with: repair it, or use another --workdir') \
            from e
    old.pop('data_used', None)
    check_resume(old, json.loads(config.to_json()), workdir, warn=False)


# ---- The lock -----------------------------------------------------------------------------------

def _stale_after_s() -> float:
    return float(os.environ.get('DEEPGEN_LOCK_STALE_S', '120'))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _describe(holder: dict, lock_path: str) -> str:
    age = time.time() - float(holder.get('heartbeat', 0))
    return (f'process {holder.get("pid")} on host {holder.get("host")} (started '
            f'{holder.get("started")}, last heard {age:.0f} s ago: {holder.get("command")}) '
            f'holds {lock_path}')


class _Lock:
    """The lock file of one workdir, held by this process."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK)
        self.local = not files.is_url(workdir)
        self.record = {'pid': os.getpid(), 'host': socket.gethostname(),
                       'started': datetime.datetime.now().astimezone().isoformat(
                           timespec='seconds'),
                       'command': ' '.join(sys.argv)}
        self._fd = None
        self._stop = threading.Event()
        self._thread = None
        self.created_workdir = False

    def _read_holder(self) -> dict | None:
        try:
            with files.open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _stale(self, holder: dict | None, flocked: bool) -> bool:
        """Whether a lock file's holder is gone: its flock is free and it ran here, or it has
        not been heard from for DEEPGEN_LOCK_STALE_S."""
        if holder is None:
            return True
        if flocked and holder.get('host') == socket.gethostname():
            return True  # the kernel released its flock: it exited or was killed
        if holder.get('host') == socket.gethostname() and not _alive(int(holder.get('pid', -1))):
            return True
        return time.time() - float(holder.get('heartbeat', 0)) > _stale_after_s()

    def _write(self) -> None:
        text = json.dumps({**self.record, 'heartbeat': time.time()})
        if self.local:  # the file holding the flock is rewritten in place
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, text.encode(), 0)
            os.fsync(self._fd)
        else:
            with files.open(self.path + '.tmp', 'w') as f:
                f.write(text)
            files.replace(self.path + '.tmp', self.path)

    def acquire(self) -> None:
        if self.local and os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
            raise UserError(f'--workdir {files.absolute(self.workdir)} is a file, not a '
                            'directory: name a directory (a new one starts a run, an existing '
                            'one resumes it)')
        self.created_workdir = not files.exists(self.workdir)
        try:
            files.makedirs(self.workdir)
            if self.local:
                self._acquire_local()
        except OSError as e:
            if is_disk_full(e):
                raise
            raise UserError(f'cannot write to --workdir {files.absolute(self.workdir)}: '
                            f'{e.strerror or e}') from e
        if not self.local:
            holder = self._read_holder()
            if files.exists(self.path) and not self._stale(holder, flocked=False):
                raise UserError(f'{files.absolute(self.workdir)} is in use by another run: '
                                f'{_describe(holder, self.path)}. Wait for it, or stop it')
            if holder is not None:
                logging.warning('taking over the stale lock of %s', _describe(holder, self.path))
        self._write()
        self._thread = threading.Thread(target=self._beat, daemon=True, name='workdir-lock')
        self._thread.start()

    def _acquire_local(self) -> None:
        import fcntl
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = self._read_holder() or {}
                raise UserError(f'{os.path.abspath(self.workdir)} is in use by another run: '
                                f'{_describe(holder, self.path)}. Wait for it, or stop it '
                                'first') from None
            try:  # the file may have been removed by its holder between our open and flock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            self._fd = fd
            break
        holder = self._read_holder()
        if holder is not None and not self._stale(holder, flocked=True):
            os.close(self._fd)  # another host's run, on a filesystem whose flocks do not reach us
            self._fd = None
            raise UserError(f'{os.path.abspath(self.workdir)} is in use by another run: '
                            f'{_describe(holder, self.path)}. Wait for it, or stop it first')
        if holder is not None:
            logging.warning('taking over the lock that %s left (it is no longer running)',
                            f'process {holder.get("pid")} on host {holder.get("host")}')

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except OSError as e:  # a full disk or a lost bucket: the run itself will say so
                logging.warning('could not refresh the workdir lock %s: %s', self.path, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if self.local:
                if self._fd is not None:
                    os.remove(self.path)
                    os.close(self._fd)  # releases the flock, after the file is gone
                    self._fd = None
            else:
                files.remove(self.path)
        except OSError as e:
            logging.warning('could not remove the workdir lock %s: %s', self.path, e)
        if self.created_workdir and self.local and not os.listdir(self.workdir):
            os.rmdir(self.workdir)  # a run that stopped before writing leaves nothing behind


@contextlib.contextmanager
def hold(workdir: str):
    """Holds the workdir's lock for the block: taken by process 0, and every process of a
    multi-process run stops with a UserError if it could not be taken."""
    lock, error = None, None
    if jax.process_index() == 0:
        lock = _Lock(workdir)
        try:
            lock.acquire()
        except UserError as e:
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not ok and error is None:
            error = UserError(f'process 0 could not take the lock of the workdir '
                              f'{files.absolute(workdir)}; its log says why')
    if error is not None:
        raise error
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
