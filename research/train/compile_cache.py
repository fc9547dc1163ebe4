"""JAX's persistent compilation cache, on by default for every command.

A second run of the same program (same code, shapes, devices and XLA flags) loads its compiled
train step, init and evaluation programs from disk instead of compiling them again. The
directory is $DEEPGEN_CACHE_DIR, default $XDG_CACHE_HOME/deepgen/jax (~/.cache/deepgen/jax);
DEEPGEN_CACHE_DIR=off turns it off. It must be configured before the first computation, so
each command calls `configure()` first thing (research.train.cli.main does for every
experiment). JAX keys each entry on the program's HLO, the compile options, the devices and
the jax/jaxlib versions, so a stale entry is never loaded; delete the directory to reclaim
its space.

Programs that compile in under MIN_COMPILE_S are not cached (JAX's default, 1 s, would skip
most of ours on an accelerator, while eager ops, ~1 ms each, would flood the directory). JAX's
own JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS, when set, stands instead (0 caches every
program, eager ops included, so that what is cached no longer depends on how busy the machine
was while it compiled).
"""
import os

import jax
from absl import logging

from research.errors import UserError

ENV = 'DEEPGEN_CACHE_DIR'
MIN_COMPILE_S = 0.1


def cache_dir(environ=None) -> str | None:
    """The cache directory, or None when DEEPGEN_CACHE_DIR=off."""
    environ = os.environ if environ is None else environ
    value = environ.get(ENV, '').strip()
    if value.lower() in ('off', '0', 'none', 'false'):
        return None
    if value:
        return os.path.abspath(os.path.expanduser(value))
    base = environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'deepgen', 'jax')


def configure(environ=None) -> str | None:
    """Points JAX's persistent compilation cache at cache_dir(); returns it (None: off)."""
    directory = cache_dir(environ)
    if directory is None:
        jax.config.update('jax_enable_compilation_cache', False)
        return None
    try:
        os.makedirs(directory, exist_ok=True)
        if not os.access(directory, os.W_OK):
            raise PermissionError('not writable')
    except OSError as e:
        if (os.environ if environ is None else environ).get(ENV, '').strip():
            raise UserError(f'{ENV}={directory}: cannot write there ({e}); name a writable '
                            f'directory, or {ENV}=off') from None
        # the default under a read-only home: run uncached rather than not at all, and say so
        logging.warning('cannot write the compilation cache %s (%s): compiling without one; '
                        'set %s to a writable directory, or to off', directory, e, ENV)
        jax.config.update('jax_enable_compilation_cache', False)
        return None
    jax.config.update('jax_enable_compilation_cache', True)
    jax.config.update('jax_compilation_cache_dir', directory)
    # os.environ, not `environ`: JAX itself read this variable from the process at import
    if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
        jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_S)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
    return directory
