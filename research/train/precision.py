"""Mixed precision for any train step: `--config.train.precision=bf16`.

    step = precision.apply(step, 'bf16')   # the loop does this; 'f32' returns step itself

Under bf16 every matrix multiplication and convolution of the step (forward and backward, as
the step traces them) takes bfloat16 inputs and accumulates and returns float32; everything
else stays float32: the parameters and optimizer state, activations between layers, losses,
normalisation statistics, softmax, the optimizer's update. That is the usual mixed-precision
recipe for GPUs and TPUs, whose matrix units run bfloat16 at 2x (H100) to 16x the float32 rate
and read half the bytes; on a CPU without bf16 matrix units (these 2-core Xeons and EPYCs) it
is slower than float32, for the conversions.

It is one transformation of the step's jaxpr rather than a `dtype` on every module, so every
experiment, fused K-step program and population gets it without touching its model: the step is
traced, and each `dot_general` and `conv_general_dilated` on float32 operands, inside any
jit, scan, cond, while or custom-derivative call (not remat or shard_map, which none of our
steps uses), is rebound with its operands cast to bfloat16
and `preferred_element_type=float32`. Nothing else changes, so the step's signature (shapes and
dtypes in and out) is that of the float32 step.

On the CPU backend the operands are rounded to bfloat16 and multiplied as float32 instead
(`native=False`): XLA:CPU has no kernel for some bfloat16 x bfloat16 = float32 products (a
batched dot whose contracting dimension is not the last, as attention's backward makes:
"Unsupported element type for DotThunk::Execute: BF16 x BF16 = F32", jaxlib 0.10.2). The
numbers are those of the accelerators' kernels up to summation order, since a product of two
bfloat16 values is exact in float32, so a CPU run checks what bf16 does to a recipe; it is not
faster (there are no bf16 matrix units to use).
"""
import functools

import jax
import jax.numpy as jnp
from jax._src import source_info_util  # for op names, as jax.core.eval_jaxpr keeps them
from jax.extend import core

PRECISIONS = ('f32', 'bf16')
_MATMULS = ('dot_general', 'conv_general_dilated')


def check(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f'train.precision must be one of {", ".join(PRECISIONS)}, got '
                         f'{precision!r}')


def apply(step, precision: str, *, native: bool | None = None):
    """`step` with its matmul and convolution inputs in `precision` (f32: step unchanged).
    native: bfloat16 operands (the default off the CPU backend), else float32 operands rounded
    to bfloat16 (the default on it)."""
    check(precision)
    if precision == 'f32':
        return step
    if native is None:
        native = jax.default_backend() != 'cpu'

    @functools.wraps(step)
    def mixed(*args):
        closed, shape = jax.make_jaxpr(step, return_shape=True)(*args)
        outs = _eval(closed.jaxpr, closed.consts, native, *jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(shape), outs)

    return mixed


def _eval(jaxpr, consts, native, *args):
    """Evaluates `jaxpr` with its matmuls' float32 operands cast to bfloat16 (native) or rounded
    to it."""
    env = {}

    def read(v):
        return v.val if isinstance(v, core.Literal) else env[v]

    for var, value in zip(jaxpr.constvars, consts):
        env[var] = value
    for var, value in zip(jaxpr.invars, args):
        env[var] = value
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        params = eqn.params
        if eqn.primitive.name in _MATMULS and all(x.dtype == jnp.float32 for x in invals[:2]):
            invals = [_round(x, native) for x in invals[:2]] + invals[2:]
            params = {**params, 'preferred_element_type': jnp.float32}
        else:
            params = {k: _transform(v, native) for k, v in params.items()}
        name_stack = source_info_util.current_name_stack() + eqn.source_info.name_stack
        with source_info_util.user_context(eqn.source_info.traceback, name_stack=name_stack), \
                eqn.ctx.manager:  # as jax's eval_jaxpr: the profile keeps the step's op names
            outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(params))
        if not eqn.primitive.multiple_results:
            outs = [outs]
        for var, value in zip(eqn.outvars, outs):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]


def _round(x, native: bool):
    x = x.astype(jnp.bfloat16)
    return x if native else x.astype(jnp.float32)


def _transform(value, native: bool):
    """A primitive's parameter, with any jaxpr in it transformed (a tuple of them: each)."""
    if type(value) in (tuple, list):  # not a namedtuple of dimension numbers
        return type(value)(_transform(v, native) for v in value)
    if isinstance(value, core.ClosedJaxpr):
        return _closed(value, native)
    return value  # an open Jaxpr (remat, shard_map) stays float32: none of our steps has one


def _closed(closed, native: bool):
    """A ClosedJaxpr of the same signature, its matmuls' operands in bfloat16."""
    avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype, weak_type=v.aval.weak_type)
             for v in closed.jaxpr.invars]
    return jax.make_jaxpr(lambda *args: _eval(closed.jaxpr, closed.consts, native, *args))(*avals)
