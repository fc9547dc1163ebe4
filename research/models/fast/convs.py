"""Exact, faster forms of transposed convolutions on XLA:CPU (the DCGAN generator's, and the
conv VAE decoder's stride-2 ones).

Found by profiling the train step per layer (batch 128, 2 CPU cores):

* `SubpixelConvTranspose`: XLA runs a stride-2 `nn.ConvTranspose` as a convolution over a
  zero-dilated input, three quarters of whose multiplications are by zero; the DCGAN's 128->64
  layer took 0.86 s forward+backward. The same linear map as one stride-1 convolution with s*s
  times the output channels followed by depth-to-space (the "sub-pixel" form) takes 0.08 s.
* `FourierConvTranspose`: the stride-1 5x5 256->128 layer on the 7x7 map is the step's largest
  cost; as a product of small DFTs it runs 1.6x faster forward+backward than XLA's convolution.

(The discriminator's stride-2 `nn.Conv` layers stay as they are: their space-to-depth form was
measured slower, because its weight gradient is a slow convolution on XLA:CPU.)

Each module holds exactly the parameters of the Flax layer it replaces (same names, shapes and
initialisers; 'SAME' padding only) and computes the same function: the rewritten kernel is derived
from the original one on every call, so gradients flow to the original parameters.
`tests/test_fast_kernels.py` checks outputs and gradients against `nn.ConvTranspose`.
"""
import math
from typing import Any, Callable

import flax.linen as nn
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


def _gather_kernel(kernel, table):
    """(k, k, I, O) kernel -> (D, D, s, s, I, O) by the tap table; missing taps are zero."""
    padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
    return padded[table[:, None, :, None], table[None, :, None, :]]


class SubpixelConvTranspose(nn.Module):
    """`nn.ConvTranspose(features, (k, k), strides=(s, s), padding='SAME')`, computed fast.

    Output pixel (s*i + a) of the transposed convolution reads input pixels i + d through kernel
    tap s*d + pad_lo - a, where pad_lo is lax's 'SAME' padding of the dilated input. Grouping output
    pixels by phase a gives one stride-1 convolution per phase, all phases in one call with s*s*O
    output channels, interleaved back by depth-to-space.
    """
    features: int
    kernel_size: int
    strides: int
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x):
        k, s, o = self.kernel_size, self.strides, self.features
        n, h, w, c = x.shape
        kernel = self.param('kernel', self.kernel_init, (k, k, c, o))
        pad_lo = _transpose_pad_lo(k, s)
        # Tap for output phase a at offset d is s*d + pad_lo - a: index phases backwards.
        table, d_min = _tap_table(k, s, pad_lo - (s - 1))
        table = table[:, ::-1]
        sub = _gather_kernel(kernel, table)  # (D, D, s_a, s_b, I, O)
        depth = table.shape[0]
        sub = jnp.transpose(sub, (0, 1, 4, 2, 3, 5)).reshape(depth, depth, c, s * s * o)
        pad = (-d_min, depth - 1 + d_min)
        y = lax.conv_general_dilated(x, sub.astype(x.dtype), (1, 1), (pad, pad),
                                     dimension_numbers=_DIMS)
        y = y.reshape(n, h, w, s, s, o).transpose(0, 1, 3, 2, 4, 5).reshape(n, h * s, w * s, o)
        if self.use_bias:
            y = y + self.param('bias', self.bias_init, (o,)).astype(y.dtype)
        return y


def _dft_matrices(h: int, w: int, kh: int, kw: int, crop_h: int, crop_w: int):
    """Real matrices for a 'SAME' stride-1 correlation done as a product of 2-D DFTs.

    The linear (not circular) convolution of an h x w image with a kh x kw kernel fits in a
    (h+kh-1) x (w+kw-1) DFT; its nb real-FFT bins are stored as [real parts | imaginary parts].
    Returns (image -> bins (h*w, 2nb), flipped kernel -> bins (kh*kw, 2nb), bins -> cropped
    output (2nb, h*w), nb), all derived from numpy's FFT so the conventions cannot drift.
    """
    fh, fw = h + kh - 1, w + kw - 1
    nb = fh * (fw // 2 + 1)

    def to_bins(impulses, n):
        f = np.fft.rfft2(impulses, s=(fh, fw))
        return np.concatenate([f.real.reshape(n, nb), f.imag.reshape(n, nb)], 1)

    image = to_bins(np.eye(h * w).reshape(h * w, h, w), h * w)
    # Correlation = convolution with the flipped kernel.
    kernel = to_bins(np.eye(kh * kw).reshape(kh * kw, kh, kw)[:, ::-1, ::-1], kh * kw)
    basis = np.eye(2 * nb)
    spectra = (basis[:, :nb] + 1j * basis[:, nb:]).reshape(2 * nb, fh, fw // 2 + 1)
    full = np.fft.irfft2(spectra, s=(fh, fw))
    back = full[:, crop_h:crop_h + h, crop_w:crop_w + w].reshape(2 * nb, h * w)
    return [jnp.asarray(m, jnp.float32) for m in (image, kernel, back)] + [nb]


class FourierConvTranspose(nn.Module):
    """`nn.ConvTranspose(features, (k, k), padding='SAME')` (stride 1), computed by DFT.

    Why: the DCGAN's 5x5, 256->128 layer on a 7x7 image is the most expensive op of the step
    (10 GFLOP forward at batch 128), and XLA:CPU convolutions run it at a fraction of the
    machine's matmul speed. In the Fourier domain the 25-tap correlation becomes a per-frequency
    complex matrix product over channels (66 frequencies of an 11x11 real DFT, 2.2 GFLOP), and the
    DFTs of the tiny images are themselves small matrix products. Same parameters and the same
    linear map as the Flax layer (exact up to float32 rounding, ~1e-6 relative; tested).
    """
    features: int
    kernel_size: int
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x):
        k, o = self.kernel_size, self.features
        n, h, w, c = x.shape
        kernel = self.param('kernel', self.kernel_init, (k, k, c, o))
        # The full linear convolution of the flipped kernel is offset by (k-1) - pad_lo from the
        # 'SAME' output.
        crop = (k - 1) - _transpose_pad_lo(k, 1)
        to_bins, kernel_to_bins, from_bins, nb = _dft_matrices(h, w, k, k, crop, crop)
        xf = jnp.einsum('bpc,pq->qbc', x.reshape(n, h * w, c), to_bins.astype(x.dtype))
        xf = jnp.concatenate([xf[:nb], xf[nb:]], -1)  # (nb, n, [re | im] 2c)
        wf = jnp.einsum('pco,pq->qco', kernel.reshape(k * k, c, o).astype(x.dtype),
                        kernel_to_bins.astype(x.dtype))
        wr, wi = wf[:nb], wf[nb:]
        # (a + ib)(c + id) as one real product: [a | b] @ [[c, d], [-d, c]].
        wf = jnp.concatenate([jnp.concatenate([wr, wi], -1), jnp.concatenate([-wi, wr], -1)], 1)
        yf = jnp.einsum('nbc,nco->nbo', xf, wf)  # (nb, n, [re | im] 2o)
        yf = jnp.concatenate([yf[..., :o], yf[..., o:]], 0)
        y = jnp.einsum('qbo,qp->bpo', yf, from_bins.astype(x.dtype)).reshape(n, h, w, o)
        if self.use_bias:
            y = y + self.param('bias', self.bias_init, (o,)).astype(y.dtype)
        return y
