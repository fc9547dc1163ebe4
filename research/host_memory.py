"""Host memory: freed blocks stay in the process, so a step's temporaries are not page-faulted
in anew on every call.

XLA:CPU allocates each call's temporaries with malloc and frees them at its end. glibc serves a
block above its mmap threshold (at most 32 MiB) with a fresh mmap and unmaps it on free, so the
kernel maps and zeroes those pages again on every step: the baby GPT's backward pass has its
temporaries in such a block, and its step ran at 12 steps/s against PyTorch's 15-22 on 2 cores
of an AMD EPYC (Zen 3). `apply()` (run when `research` is imported) calls glibc's
`mallopt(M_MMAP_MAX, 0)` and `mallopt(M_TRIM_THRESHOLD, 1 GiB)`: every block comes from the
heap and freed memory is kept for the next call. The process keeps its peak memory instead of
handing it back, which a training process reaches again at the next step anyway.

It does nothing where the allocator is not glibc's, where `DEEPGEN_MALLOC=default`, or where the
environment already tunes malloc (`GLIBC_TUNABLES` or a `MALLOC_*` variable): those are the
user's choice.
"""
import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
TRIM_THRESHOLD = 1 << 30


def _glibc_mallopt():
    """glibc's mallopt, or None (another C library, another system)."""
    if not sys.platform.startswith('linux'):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl has a mallopt that does nothing
        return libc.mallopt
    except (OSError, AttributeError):
        return None


def wanted(environ) -> bool:
    """Whether to tune malloc: not when the user asked for the default or tunes it already."""
    if environ.get('DEEPGEN_MALLOC', '') == 'default':
        return False
    return not ('GLIBC_TUNABLES' in environ or any(key.startswith('MALLOC_') for key in environ))


def apply(environ=None) -> bool:
    """Keeps freed memory in the process (see above); True if it did."""
    environ = os.environ if environ is None else environ
    mallopt = _glibc_mallopt() if wanted(environ) else None
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
