"""Host memory: freed blocks stay in the process, so a step's temporaries are not page-faulted
in anew on every call.

XLA:CPU allocates each call's temporaries with malloc and frees them at its end. glibc serves a
block above its mmap threshold (at most 32 MiB) with a fresh mmap and unmaps it on free, so the
kernel maps and zeroes those pages again on every step: the baby GPT's backward pass has its
temporaries in such a block, and its step ran at 12 steps/s against PyTorch's 15-22 on 2 cores
of an AMD EPYC (Zen 3). `apply()` (run when `research` is imported) calls glibc's
`mallopt(M_MMAP_MAX, 0)` and `mallopt(M_TRIM_THRESHOLD, 1 GiB)`: every block comes from the
heap and freed memory is kept for the next call.

One arena, where a process needs it: `one_arena()` calls `mallopt(M_ARENA_MAX, 1)`, so every
thread started afterwards allocates from the one main heap. XLA runs programs on threads of its
own, and glibc gives other threads arenas of their own, whose heaps are at most 64 MiB each; a
block that does not fit one is mmapped whatever M_MMAP_MAX says, and unmapped on free. So a
program with 64 MiB of temporaries or more (char_lm's Transformer step at its batch of 16:
71 MiB; the char LSTM's at 64: 70 MiB; the classifier's CNN and flow_mnist's U-Net steps at
their defaults) faulted every page of them in again on every call, 18,000 to 28,000 page faults
a step. char_lm, classifier and flow_mnist call it first thing (and `benchmarks/bench.py` for the
char models); `DEEPGEN_MALLOC=one-arena` asks for it in any command, `keep` leaves it out.
Measured on 2 cores of an AMD EPYC (Zen 4), whole processes: char_lm for 150 steps, 3.0 million
page faults and 6.6 s of system time without it, 0.17 million and 0.8 s with it, its log's 231
examples/s became 360; the classifier for 300 steps 27.2 s against 17.8 (8.5 million page faults
against 0.18); flow_mnist for 200 steps 95.3 s against 82.9 (328 against 397 examples/s); the
char LSTM bench step 1.18x (three alternating rounds). It is not the default because the
threads then share one lock: the small steps lost to it (five alternating rounds of the bench,
one arena for every process: MLP VAE 0.78x, MLP GAN 0.90x, RBM 0.94x). On a GPU or TPU the
temporaries live on the device, so there one arena buys nothing (not measured there:
DEEPGEN_MALLOC=keep leaves it out).

The process keeps its peak memory instead of handing it back, which a training process reaches
again at the next step anyway. Neither does anything where the allocator is not glibc's, where
`DEEPGEN_MALLOC=default`, or where the environment already tunes malloc (`GLIBC_TUNABLES` or a
`MALLOC_*` variable): those are the user's choice. Threads that allocated before `one_arena()`
keep the arenas they have.
"""
import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc's malloc.h
TRIM_THRESHOLD = 1 << 30
ENV = 'DEEPGEN_MALLOC'
CHOICES = ('keep', 'one-arena', 'default')  # DEEPGEN_MALLOC's values


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


def choice(environ) -> str:
    """DEEPGEN_MALLOC: '' when unset (keep freed memory, and one arena where a command asks
    for it), 'keep' (keep freed memory only), 'one-arena' (keep it, and one arena in every
    command) or 'default' (glibc's own behaviour)."""
    value = environ.get(ENV, '')  # unset: ''
    if value and value not in CHOICES:
        raise ValueError(f"{ENV} must be 'keep', 'one-arena' or 'default', got {value!r}")
    return value


def wanted(environ) -> bool:
    """Whether to tune malloc: not when the user asked for the default or tunes it already."""
    if choice(environ) == 'default':
        return False
    return not ('GLIBC_TUNABLES' in environ or any(key.startswith('MALLOC_') for key in environ))


def apply(environ=None) -> bool:
    """Keeps freed memory in the process (see above); True if it did."""
    environ = os.environ if environ is None else environ
    mallopt = _wanted_mallopt(environ)
    if mallopt is None:
        return False
    done = [mallopt(M_MMAP_MAX, 0), mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)]
    if choice(environ) == 'one-arena':
        done.append(mallopt(M_ARENA_MAX, 1))
    return all(done)


def one_arena(environ=None) -> bool:
    """Every thread started from now on allocates from the main heap (see above), unless the
    user's environment says otherwise (DEEPGEN_MALLOC=keep or default, or malloc settings of its
    own); True if it did. Call it before JAX starts its backend: XLA's threads take their arenas
    then."""
    environ = os.environ if environ is None else environ
    mallopt = None if choice(environ) == 'keep' else _wanted_mallopt(environ)
    return mallopt is not None and bool(mallopt(M_ARENA_MAX, 1))


def _wanted_mallopt(environ):
    """glibc's mallopt where tuning is wanted (see `wanted`), else None."""
    return _glibc_mallopt() if wanted(environ) else None
