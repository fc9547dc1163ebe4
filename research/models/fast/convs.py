"""Exact, faster forms of transposed and strided convolutions on XLA:CPU (the DCGAN generator's
and the conv VAE decoder's stride-2 transposed ones, the DCGAN discriminator's strided one).

Found by profiling the train step per layer (batch 128, 2 CPU cores):

* `SubpixelConvTranspose`: XLA runs a stride-2 `nn.ConvTranspose` as a convolution over a
  zero-dilated input, three quarters of whose multiplications are by zero; the DCGAN's 128->64
  layer took 0.86 s forward+backward. The same linear map as one stride-1 convolution with s*s
  times the output channels followed by depth-to-space (the "sub-pixel" form) takes 0.08 s.
* `StridedConv`: a stride-2 `nn.Conv` whose input gradient (a convolution over a zero-dilated
  output gradient in JAX's derivative) is done in the sub-pixel form; forward and weight
  gradient unchanged. (A space-to-depth form of the whole layer was measured slower: its weight
  gradient is a slow convolution on XLA:CPU.)

Each module holds exactly the parameters of the Flax layer it replaces (same names, shapes and
initialisers; 'SAME' padding only) and computes the same function: the rewritten kernel is derived
from the original one on every call, so gradients flow to the original parameters.
`tests/test_fast_kernels.py` checks outputs and gradients against `nn.ConvTranspose` and
`nn.Conv`.
"""
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Initializer = Callable[..., Any]
_DIMS = ('NHWC', 'HWIO', 'NHWC')


def _tap_table(k: int, s: int, offset: int) -> tuple[np.ndarray, int]:
    """Index into a length-k kernel (k means "no tap") for each (window position d, phase b).

    Both rewrites reduce to: kernel tap t = s*d + b + offset feeds window position d of phase b;
    taps outside [0, k) do not exist. Returns the table, shape (D, s), and the window's first d.
    """
    d_min = math.ceil((-(s - 1) - offset) / s)
    d_max = (k - 1 - offset) // s
    d = np.arange(d_min, d_max + 1)[:, None]
    t = s * d + np.arange(s)[None, :] + offset
    return np.where((t >= 0) & (t < k), t, k), d_min


def _transpose_pad_lo(k: int, s: int) -> int:
    """Padding lax.conv_transpose(..., 'SAME') puts before the dilated input (its private
    `_conv_transpose_padding`), which fixes where each output pixel's taps fall."""
    return math.ceil((k + s - 2) / 2) if s <= k - 1 else k - 1


def _phase_conv(x, kernel, s: int, pad_lo: tuple[int, int]):
    """The stride-1 'valid' convolution of x dilated by s (s - 1 zeros between pixels) and padded
    by pad_lo = (rows, columns) zeros before it, with kernel (k, k, I, O), at the h*s x w*s
    output pixels from the first: computed as s*s phase convolutions of x itself, all in one call
    with s*s*O output channels, interleaved back by depth-to-space.

    Output pixel s*i + a reads x[i + d] through kernel tap s*d + pad_lo - a (the zeros of the
    dilation meet the other taps), so no multiplication by a dilation zero is done.
    """
    n, h, w, c = x.shape
    k, o = kernel.shape[0], kernel.shape[3]
    # Tap for output phase a at offset d is s*d + pad_lo - a: index phases backwards.
    (rows, d_rows), (cols, d_cols) = [_tap_table(k, s, lo - (s - 1)) for lo in pad_lo]
    rows, cols = rows[:, ::-1], cols[:, ::-1]
    padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))  # tap k: a missing tap, zero
    sub = padded[rows[:, None, :, None], cols[None, :, None, :]]  # (Dr, Dc, s_a, s_b, I, O)
    sub = jnp.transpose(sub, (0, 1, 4, 2, 3, 5)).reshape(len(rows), len(cols), c, s * s * o)
    pads = ((-d_rows, len(rows) - 1 + d_rows), (-d_cols, len(cols) - 1 + d_cols))
    y = lax.conv_general_dilated(x, sub.astype(x.dtype), (1, 1), pads, dimension_numbers=_DIMS)
    return y.reshape(n, h, w, s, s, o).transpose(0, 1, 3, 2, 4, 5).reshape(n, h * s, w * s, o)


class _StridedLayer(nn.Module):
    """The fields, kernel and bias of a k x k stride-s layer, as the Flax layer it replaces."""
    features: int
    kernel_size: int
    strides: int
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()

    def kernel(self, in_features: int):
        k = self.kernel_size
        return self.param('kernel', self.kernel_init, (k, k, in_features, self.features))

    def biased(self, y):
        if not self.use_bias:
            return y
        return y + self.param('bias', self.bias_init, (self.features,)).astype(y.dtype)


class SubpixelConvTranspose(_StridedLayer):
    """`nn.ConvTranspose(features, (k, k), strides=(s, s), padding='SAME')`, computed fast.

    Output pixel (s*i + a) of the transposed convolution reads input pixels i + d through kernel
    tap s*d + pad_lo - a, where pad_lo is lax's 'SAME' padding of the dilated input. Grouping output
    pixels by phase a gives one stride-1 convolution per phase, all phases in one call with s*s*O
    output channels, interleaved back by depth-to-space.
    """

    @nn.compact
    def __call__(self, x):
        pad_lo = _transpose_pad_lo(self.kernel_size, self.strides)
        return self.biased(_phase_conv(x, self.kernel(x.shape[-1]), self.strides,
                                       (pad_lo, pad_lo)))


def _same_pads(x, kernel, s: int):
    return lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], (s, s), 'SAME')


def _strided_conv(x, kernel, s: int):
    """lax's stride-s 'SAME' convolution (NHWC, HWIO)."""
    return lax.conv_general_dilated(x, kernel, (s, s), _same_pads(x, kernel, s),
                                    dimension_numbers=_DIMS)


# The same function, its input gradient in the phase form.
strided_conv = jax.custom_vjp(_strided_conv, nondiff_argnums=(2,))


def _strided_conv_fwd(x, kernel, s):
    return strided_conv(x, kernel, s), (x, kernel)


def _strided_conv_bwd(s, residuals, dy):
    x, kernel = residuals
    k = kernel.shape[0]
    # The input gradient is the correlation of dy dilated by s with the kernel flipped and its
    # channels swapped, padded by k - 1 - (the forward's low padding): the phase form's input.
    flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)
    pad_lo = tuple(k - 1 - lo for lo, _ in _same_pads(x, kernel, s))
    dx = _phase_conv(dy, flipped, s, pad_lo)[:, :x.shape[1], :x.shape[2]]
    _, kernel_vjp = jax.vjp(lambda w: _strided_conv(x, w, s), kernel)
    return dx.astype(x.dtype), kernel_vjp(dy)[0]


strided_conv.defvjp(_strided_conv_fwd, _strided_conv_bwd)


class StridedConv(_StridedLayer):
    """`nn.Conv(features, (k, k), strides=(s, s), padding='SAME')`, its input gradient computed
    fast.

    Why: JAX differentiates a stride-s convolution with respect to its input as a convolution
    over the output gradient dilated by s, and XLA:CPU multiplies all its zeros. The DCGAN
    discriminator's 64->128 layer, forward and backward at batch 128 on 2 cores of an AMD EPYC
    (Zen 5): 52 ms as `nn.Conv`, 26 ms in this form (PyTorch: 29 ms), with XLA's Eigen
    convolutions (research/xla_flags.py). The forward pass and the kernel's gradient are XLA's
    own. On a 1-channel input (an image) the phase form was slower (7 ms against 4 for the
    input gradient): keep `nn.Conv` there.
    """

    @nn.compact
    def __call__(self, x):
        kernel = self.kernel(x.shape[-1]).astype(x.dtype)
        return self.biased(strided_conv(x, kernel, self.strides))
