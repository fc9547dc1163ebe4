"""A small U-Net for 28x28 images, conditioned on a time t in [0, 1]: the velocity field of a
flow-matching model (research/objectives/flow.py). Math only.

    x (B, 28, 28, C), t (B,) -> v (B, 28, 28, C)

    t -> sinusoidal features of 1000 t -> Dense 4w -> SiLU -> Dense 4w          (the embedding)
    Conv 3x3 w                                                           28x28
    ResBlock w            -> skip a                                      28x28
    Conv 3x3 2w /2, ResBlock 2w -> skip b                                14x14
    Conv 3x3 2w /2, ResBlock 2w, ResBlock 2w (the middle)                 7x7
    up x2, concat b, ResBlock 2w                                         14x14
    up x2, concat a, ResBlock w                                          28x28
    GroupNorm, SiLU, Conv 3x3 C (zero-initialised: v = 0 at step 0)     28x28

ResBlock(width): GroupNorm, SiLU, Conv 3x3, + Dense(embedding) per channel, GroupNorm, SiLU,
Conv 3x3, plus the input (through a 1x1 convolution when the width changes), as in Ho et al.
(2020)'s U-Net without attention. `width` w is `channels` (default 32; 16 for CPU budgets);
up x2 is nearest-neighbour. Upsampling 7 -> 14 -> 28 needs no padding, so the sizes match.
"""
import math

import flax.linen as nn
import jax.numpy as jnp


def time_features(t, dim: int):
    """(B,) times in [0, 1] -> (B, dim) sinusoidal features of 1000 t (Vaswani et al.'s
    frequencies, 1 to 1/10000)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half) / half)
    angles = 1000.0 * t[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def _norm(width: int):
    return nn.GroupNorm(num_groups=min(8, width))


class ResBlock(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x, embedding):
        h = nn.Conv(self.width, (3, 3))(nn.silu(_norm(x.shape[-1])(x)))
        h = h + nn.Dense(self.width)(nn.silu(embedding))[:, None, None, :]
        h = nn.Conv(self.width, (3, 3))(nn.silu(_norm(self.width)(h)))
        if x.shape[-1] != self.width:
            x = nn.Conv(self.width, (1, 1))(x)
        return x + h


def _up(x):
    b, h, w, c = x.shape
    return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(
        b, 2 * h, 2 * w, c)


class UNet(nn.Module):
    channels: int = 32

    @nn.compact
    def __call__(self, x, t):
        w = self.channels
        embedding = time_features(t, w)
        embedding = nn.Dense(4 * w)(nn.silu(nn.Dense(4 * w)(embedding)))
        h = nn.Conv(w, (3, 3))(x)
        a = ResBlock(w)(h, embedding)
        h = nn.Conv(2 * w, (3, 3), strides=(2, 2))(a)
        b = ResBlock(2 * w)(h, embedding)
        h = nn.Conv(2 * w, (3, 3), strides=(2, 2))(b)
        h = ResBlock(2 * w)(ResBlock(2 * w)(h, embedding), embedding)
        h = ResBlock(2 * w)(jnp.concatenate([_up(h), b], axis=-1), embedding)
        h = ResBlock(w)(jnp.concatenate([_up(h), a], axis=-1), embedding)
        h = nn.silu(_norm(w)(h))
        return nn.Conv(x.shape[-1], (3, 3), kernel_init=nn.initializers.zeros)(h)
