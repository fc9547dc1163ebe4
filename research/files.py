"""Files in a workdir that may be local or in a bucket (gs://, s3://).

On a Cloud TPU VM slice the workdir is a bucket every host can reach, so everything a run
writes (config.json, metrics.jsonl, run_info.json, pictures, samples, results) goes through
these few functions: local paths use the plain filesystem calls, URLs (anything with '://')
use etils.epath, which orbax uses for the checkpoints too (`pip install -e '.[tpu]'` brings its
GCS support). TensorBoard event files go through tensorboardX, which writes gs:// itself.
"""
import builtins
import os

from etils import epath


def is_url(path) -> bool:
    return '://' in str(path)


def _remote(path):
    return epath.Path(str(path))


def open(path, mode: str = 'r'):  # noqa: A001 -- the same verb
    """builtins.open for local paths, etils.epath for URLs; text modes are UTF-8 in both."""
    encoding = None if 'b' in mode else 'utf-8'
    if is_url(path):
        return _remote(path).open(mode, encoding=encoding)
    return builtins.open(path, mode, encoding=encoding)


def exists(path) -> bool:
    return _remote(path).exists() if is_url(path) else os.path.exists(path)


def makedirs(path) -> None:
    if is_url(path):
        _remote(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def remove(path) -> None:
    if is_url(path):
        _remote(path).unlink()
    else:
        os.remove(path)


def replace(source, target) -> None:
    """Renames source to target, overwriting it (atomic on a local filesystem)."""
    if is_url(source):
        _remote(source).rename(_remote(target))
    else:
        os.replace(source, target)


def absolute(path) -> str:
    """The path as a message should show it: absolute if local, as given if a URL."""
    return str(path) if is_url(path) else os.path.abspath(path)
