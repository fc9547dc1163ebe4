"""A step's FLOPs, counted from its jaxpr, and model FLOP utilisation where the device's peak is
known.

    flops = step_flops(step, state, batch)   # multiply-adds of every matmul and convolution, x2
    utilisation(flops * steps_per_s, jax.devices()[0].device_kind)   # MFU, or None

Why not XLA's cost analysis (`compiled.cost_analysis()['flops']`): it counts the body of a loop
once, whatever its trip count, so a scanned LSTM or a fused K-step program comes out K times too
small (measured: a 10-step scan of a 128x256 @ 256x256 matmul reports 1.7e7 FLOPs, one step's).
Counting the jaxpr instead multiplies a `scan` body by its length. What is counted is what
MFU conventionally counts, the matmuls and convolutions (2 FLOPs per multiply-add, forward and
backward, as the step traces them; a convolution counts only the taps that meet real input,
not its padding nor the holes of a dilated input, as XLA counts them); elementwise work,
reductions and the optimizer's arithmetic are not. It is what this step computes: a faster
kernel that does less arithmetic (the char LSTM's embedding folded into its input projection)
counts less. A `while` loop (no static trip count) is counted once and named in
`StepFlops.uncounted_loops`.
"""
import dataclasses
import math

import jax
from jax.extend import core

# Peak dense bfloat16 FLOP/s of one device, by a substring of jax's `device_kind`, from the
# vendors' data sheets (NVIDIA: SXM parts, without sparsity; Google: per chip). MFU is measured
# against this peak whatever precision the step runs in, as nanoGPT and PaLM report it.
PEAK_BF16_FLOPS = (
    ('H200', 989e12),
    ('H100', 989e12),
    ('A100', 312e12),
    ('L4', 121e12),
    ('TPU v6 lite', 918e12),
    ('TPU v5p', 459e12),
    ('TPU v5 lite', 197e12),
    ('TPU v5e', 197e12),
    ('TPU v4', 275e12),
)


@dataclasses.dataclass(frozen=True)
class StepFlops:
    flops: int
    uncounted_loops: int  # `while` loops whose body was counted once


def step_flops(fn, *args) -> StepFlops:
    """FLOPs of one call of `fn(*args)` (arrays or jax.ShapeDtypeStructs), from its jaxpr."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args))


def jaxpr_flops(closed) -> StepFlops:
    """FLOPs of a traced program (a ClosedJaxpr, e.g. `jax.jit(f).trace(*args).jaxpr`)."""
    return StepFlops(*_count(closed.jaxpr))


def _count(jaxpr) -> tuple[int, int]:
    flops = loops = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == 'dot_general':
            (contract, _), _ = eqn.params['dimension_numbers']
            lhs = eqn.invars[0].aval.shape
            flops += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
        elif name == 'conv_general_dilated':
            flops += _conv_flops(eqn)
        else:
            inner = [_count(j) for j in _sub_jaxprs(eqn.params)]
            if not inner:
                continue
            if name == 'cond':  # one branch runs: count the dearest
                f, n = max(inner)
            else:
                f, n = sum(i[0] for i in inner), sum(i[1] for i in inner)
            if name == 'scan':
                f, n = f * eqn.params['length'], n * eqn.params['length']
            elif name == 'while':
                n += 1
            flops, loops = flops + f, loops + n
    return flops, loops


def _conv_flops(eqn) -> int:
    """2 x the multiply-adds that meet a real input element: not the padding, nor the holes of
    a dilated input (the input gradient of a strided convolution), counted per spatial axis."""
    p = eqn.params
    lhs_spec, rhs_spec, out_spec = p['dimension_numbers']
    lhs, rhs, out = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape, eqn.outvars[0].aval.shape
    spatial = len(rhs_spec) - 2
    taps = 1
    for axis in range(spatial):
        n, k, o = lhs[lhs_spec[2 + axis]], rhs[rhs_spec[2 + axis]], out[out_spec[2 + axis]]
        stride, (low, _) = p['window_strides'][axis], p['padding'][axis]
        lhs_dilation = (p['lhs_dilation'] or (1,) * spatial)[axis]
        rhs_dilation = (p['rhs_dilation'] or (1,) * spatial)[axis]
        last = (n - 1) * lhs_dilation
        taps *= sum(1 for i in range(o) for j in range(k)
                    if 0 <= (x := i * stride + j * rhs_dilation - low) <= last
                    and x % lhs_dilation == 0)
    return 2 * out[out_spec[0]] * out[out_spec[1]] * rhs[rhs_spec[1]] * taps


def _sub_jaxprs(params: dict):
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, core.Jaxpr):
                yield item


def peak_flops(device_kind: str) -> float | None:
    """The device's peak dense bf16 FLOP/s, or None where this table does not know it (CPUs)."""
    for key, peak in PEAK_BF16_FLOPS:
        if key.lower() in device_kind.lower():
            return peak
    return None


def utilisation(flops_per_s: float, device_kind: str, devices: int = 1) -> float | None:
    """Model FLOP utilisation: the achieved rate over `devices` devices' peak, or None."""
    peak = peak_flops(device_kind)
    return None if peak is None else flops_per_s / (peak * devices)
