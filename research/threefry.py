"""jax.random's Threefry hash compiled unrolled on the CPU where that compiles faster: in the
programs that initialise a model. Set on `import research`.

Every jax.random draw with the default key hashes counters with Threefry-2x32 (20 rounds; Salmon
et al. 2011). jax lowers that primitive unrolled, as one chain of elementwise ops, on every
platform but the CPU, where it emits a 5-iteration while loop. Which compiles faster on XLA:CPU
depends on the program:
  * an init program is little but draws, one per parameter, and a while loop each: unrolled,
    flow_mnist's smoke-preset init compiled in 4.1-5.6 s instead of 10.9-12.5 s, the default
    DCGAN's in 1.5-1.9 s instead of 3.0-3.9 s;
  * in a program that computes around its draws (a train step, a Gibbs chain, AIS, a sampler)
    the unrolled hash is fused into the ops around it and compiles slower: unrolled everywhere,
    dbn_mnist's smoke-run `monitors` compiled in 4.0-7.3 s against 1.3 s with the loop, and
    flow_mnist's train step in 10.1-15.0 s against 8.1-11.3 s; the DBN smoke run compiled in
    30.0-45.6 s in all, against 26.0-27.8 s with the loop outside its inits.
So `apply()` registers a CPU lowering that unrolls within `unrolled()` (research.train.loop
compiles each experiment's init there) and elsewhere emits jax's loop (the same fori_loop:
`threefry2x32_rolled`). The draws are the same bits either way (the same 20 rounds in the same
order: `tests/test_threefry.py` compares every sampler's draws under each form with jax's own
lowering, and Random123's known answers); a program around them may round differently where
XLA fuses it differently (README, "Speed kernels"). Measured on 2 cores of an AMD EPYC (Zen 3),
compilation cache off, two alternating runs each; no train step ran measurably faster or slower
either way.

DEEPGEN_THREEFRY: 'init' (the default, as above), 'unrolled' (everywhere) or 'rolled' (jax's own
lowering everywhere: nothing is registered).
"""
import contextlib
import os
import threading

import numpy as np
from jax import lax
from jax.extend.random import threefry2x32_p
from jax.interpreters import mlir

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)
CHOICES = ('init', 'unrolled', 'rolled')


def _round(x1, x2, r):
    x1 = x1 + x2
    return x1, x1 ^ ((x2 << r) | (x2 >> (np.uint32(32) - r)))


def threefry2x32(k1, k2, x1, x2):
    """Threefry-2x32, 20 rounds, on uint32 arrays (broadcast together): jax's hash, unrolled."""
    keys = (k1, k2, k1 ^ k2 ^ _PARITY)
    x1, x2 = x1 + keys[0], x2 + keys[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1, x2 = _round(x1, x2, np.uint32(r))
        x1 = x1 + keys[(i + 1) % 3]
        x2 = x2 + keys[(i + 2) % 3] + np.uint32(i + 1)
    return [x1, x2]


def threefry2x32_rolled(k1, k2, x1, x2):
    """The same hash as jax lowers it for the CPU: a fori_loop of 5 iterations of 4 rounds, the
    keys and the rotation amounts carried as loop data."""
    keys = [k1, k2, k1 ^ k2 ^ _PARITY]

    def body(i, carry):
        (x1, x2), ks, rotations = carry
        for r in rotations[0]:
            x1, x2 = _round(x1, x2, r)
        x = [x1 + ks[0], x2 + ks[1] + lax.convert_element_type(i + 1, np.uint32)]
        return x, ks[1:] + ks[:1], rotations[1:] + rotations[:1]

    rotations = [np.array(r, np.uint32) for r in _ROTATIONS]
    x, _, _ = lax.fori_loop(0, 5, body, ([x1 + keys[0], x2 + keys[1]], keys[1:] + keys[:1],
                                         rotations))
    return list(x)


_unrolled_rule = mlir.lower_fun(threefry2x32, multiple_results=True)
_rolled_rule = mlir.lower_fun(threefry2x32_rolled, multiple_results=True)
_state = threading.local()  # .depth: how many unrolled() blocks this thread is in


@contextlib.contextmanager
def unrolled():
    """Programs lowered (traced and compiled: the first call of a jitted function, or
    `.lower()`) within this block hash unrolled on the CPU; elsewhere, the while loop."""
    _state.depth = getattr(_state, 'depth', 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


def in_unrolled() -> bool:
    """Whether this thread is within an `unrolled()` block."""
    return getattr(_state, 'depth', 0) > 0


def _cpu_rule(ctx, *args):
    return (_unrolled_rule if in_unrolled() else _rolled_rule)(ctx, *args)


def choice(environ) -> str:
    """DEEPGEN_THREEFRY: 'init' (the default), 'unrolled' or 'rolled' (jax's CPU lowering)."""
    value = environ.get('DEEPGEN_THREEFRY', 'init')
    if value not in CHOICES:
        raise ValueError(f"DEEPGEN_THREEFRY must be 'init', 'unrolled' or 'rolled', got "
                         f'{value!r}')
    return value


def apply(environ=os.environ) -> bool:
    """Registers the CPU lowering unless DEEPGEN_THREEFRY=rolled; returns whether it did. Out
    of line, as jax emits its own unrolled form (one function, called from every draw)."""
    value = choice(environ)
    if value == 'rolled':
        return False
    mlir.register_lowering(threefry2x32_p, _unrolled_rule if value == 'unrolled' else _cpu_rule,
                           platform='cpu', inline=False)
    return True
