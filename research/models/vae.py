"""Variational autoencoders for 28x28 images: an encoder to a diagonal Gaussian, a decoder to the
parameters of a per-pixel likelihood. Math only: the likelihoods and bounds live in
`research/objectives/vae.py`.

MLP (default 784-512-20, after Kingma & Welling 2014):
    encoder: x -> Dense 512 -> ReLU -> Dense 2*latent (mean, log-variance)
    decoder: z -> Dense 512 -> ReLU -> Dense 784*C
Conv:
    encoder: x -> Conv 3x3 32 /2 -> ReLU -> Conv 3x3 64 /2 -> ReLU -> Dense 2*latent
    decoder: z -> Dense 7*7*64 -> ReLU -> ConvT 4x4 32 /2 -> ReLU -> ConvT 4x4 C /2
C is the number of decoder outputs per pixel (1 Bernoulli logit, or a discretized logistic's
mean and log-scale). `VAE.encode(x)` returns (mean, logvar), each (B, latent);
`VAE.decode(z)` returns (B, 28, 28, C). Inputs x are floats in [-1, 1], shape (B, 28, 28, 1).
With `fast=True` (the default) the conv decoder's transposed convolutions are the exact fast form
in `research/models/fast/convs.py` (same parameters and function as `nn.ConvTranspose`, measured
faster on XLA:CPU); `fast=False` uses `nn.ConvTranspose` itself.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.models.fast.convs import SubpixelConvTranspose


class MLPEncoder(nn.Module):
    latent: int
    hidden: Sequence[int] = (512,)

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        mean, logvar = jnp.split(nn.Dense(2 * self.latent)(x), 2, axis=-1)
        return mean, logvar


class MLPDecoder(nn.Module):
    out_shape: tuple[int, int, int]  # (H, W, C): C outputs per pixel
    hidden: Sequence[int] = (512,)

    @nn.compact
    def __call__(self, z):
        for width in self.hidden:
            z = nn.relu(nn.Dense(width)(z))
        h, w, c = self.out_shape
        return nn.Dense(h * w * c)(z).reshape(-1, h, w, c)


class ConvEncoder(nn.Module):
    latent: int
    widths: Sequence[int] = (32, 64)

    @nn.compact
    def __call__(self, x):
        for width in self.widths:
            x = nn.relu(nn.Conv(width, (3, 3), strides=(2, 2), padding='SAME')(x))
        mean, logvar = jnp.split(nn.Dense(2 * self.latent)(x.reshape(x.shape[0], -1)), 2, -1)
        return mean, logvar


class ConvDecoder(nn.Module):
    out_shape: tuple[int, int, int]
    widths: Sequence[int] = (64, 32)
    fast: bool = True

    def _conv_transpose(self, features: int, index: int) -> nn.Module:
        # The fast layer's Flax auto name in both modes: initial values derive from the name.
        name = f'SubpixelConvTranspose_{index}'
        if self.fast:
            return SubpixelConvTranspose(features, 4, 2, name=name)
        return nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding='SAME', name=name)

    @nn.compact
    def __call__(self, z):
        h, w, c = self.out_shape
        scale = 2 ** len(self.widths)
        if h % scale or w % scale:
            raise ValueError(f'ConvDecoder upsamples {scale}x: out_shape {self.out_shape} must '
                             f'divide by {scale}')
        x = nn.relu(nn.Dense(h // scale * w // scale * self.widths[0])(z))
        x = x.reshape(-1, h // scale, w // scale, self.widths[0])
        for index, width in enumerate(self.widths[1:]):
            x = nn.relu(self._conv_transpose(width, index)(x))
        return self._conv_transpose(c, len(self.widths) - 1)(x)


class VAE(nn.Module):
    encoder: nn.Module
    decoder: nn.Module

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)

    def __call__(self, x, z):
        """Both halves at once (used to initialise every parameter)."""
        return self.encode(x), self.decode(z)


ARCHS = ('mlp', 'conv')


def make_vae(arch: str, *, latent: int, channels: int, hidden: Sequence[int] = (512,),
             image_shape=(28, 28, 1), fast: bool = True) -> VAE:
    """A VAE from ARCHS; `channels` decoder outputs per pixel; `hidden` sizes the MLP only;
    `fast` picks the conv decoder's kernels."""
    out_shape = tuple(image_shape[:2]) + (channels,)
    if arch == 'mlp':
        return VAE(MLPEncoder(latent, tuple(hidden)), MLPDecoder(out_shape, tuple(hidden[::-1])))
    if arch == 'conv':
        return VAE(ConvEncoder(latent), ConvDecoder(out_shape, fast=fast))
    raise ValueError(f'unknown VAE architecture {arch!r}; known: {", ".join(ARCHS)}')
