"""jax.random's Threefry hash compiled unrolled on the CPU too, set on `import research`.

Every jax.random draw with the default key hashes counters with Threefry-2x32 (20 rounds; Salmon
et al. 2011). jax lowers that primitive unrolled, as one chain of elementwise ops, on every
platform but the CPU, where it emits a 5-iteration while loop (less HLO to compile, it says).
On XLA:CPU the loop is the slower choice both ways: its body goes through memory with the
rotation amounts as loop data, and XLA compiles a while loop slowly. `apply()` registers the
unrolled form for the CPU as well. The draws are the same bits (the same 20 rounds in the same
order: `tests/test_threefry.py` compares every sampler's draws with and without it, and
Random123's known answers); a program around them may round differently where XLA fuses it
differently (README, "Speed kernels"). Measured on 2 cores of an AMD EPYC (Zen 3), compilation
with the persistent cache off, three runs each: flow_mnist's smoke-preset init 10.9-12.5 s ->
4.1-5.6 s, the default DCGAN's init 3.0-3.9 s -> 1.5-1.9 s; a CD-1 step's 164,000 Bernoulli
draws 0.66-0.80 ms -> 0.36-0.39 ms (the train steps themselves did not get measurably faster:
the draws run beside the matrix products).

`DEEPGEN_THREEFRY=rolled` keeps jax's CPU lowering.
"""
import os

import numpy as np
from jax.extend.random import threefry2x32_p
from jax.interpreters import mlir

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
CHOICES = ('unrolled', 'rolled')


def threefry2x32(k1, k2, x1, x2):
    """Threefry-2x32, 20 rounds, on uint32 arrays (broadcast together): jax's hash, unrolled."""
    keys = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x1, x2 = x1 + keys[0], x2 + keys[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = x1 ^ ((x2 << np.uint32(r)) | (x2 >> np.uint32(32 - r)))
        x1 = x1 + keys[(i + 1) % 3]
        x2 = x2 + keys[(i + 2) % 3] + np.uint32(i + 1)
    return [x1, x2]


def choice(environ) -> str:
    """DEEPGEN_THREEFRY: 'unrolled' (the default) or 'rolled' (jax's CPU lowering)."""
    value = environ.get('DEEPGEN_THREEFRY', 'unrolled')
    if value not in CHOICES:
        raise ValueError(f"DEEPGEN_THREEFRY must be 'unrolled' or 'rolled', got {value!r}")
    return value


def apply(environ=os.environ) -> bool:
    """Registers the unrolled lowering for the CPU unless DEEPGEN_THREEFRY=rolled; returns
    whether it did. Out of line, as jax emits its own unrolled form (one function, called from
    every draw)."""
    if choice(environ) == 'rolled':
        return False
    mlir.register_lowering(threefry2x32_p, mlir.lower_fun(threefry2x32, multiple_results=True),
                           platform='cpu', inline=False)
    return True
