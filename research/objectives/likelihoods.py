"""Per-pixel likelihoods p(x | decoder output) for 28x28 images, summed to one value per example.

  bernoulli  binarized pixels x in {0, 1}; one logit per pixel. log p = x*l - softplus(l).
  logistic   grey levels: x = pixel/127.5 - 1, the 256 bins of width 2/255 in [-1, 1]; a logistic
             per pixel (mean, log-scale) discretized to those bins, edge bins taking the tails
             (Salimans et al. 2017, one mixture component). A proper probability over the 256
             levels, so its nats compare with any other discrete model of the same pixels.

`prepare_images` gives the training and evaluation sets as the likelihood needs them (the
evaluation set binarized once, from a seed, for bernoulli); `target(name, images, key, dynamic)`
turns a uint8 batch into what the likelihood scores (for bernoulli: a fresh binarization when
`dynamic`, else the pixels must already be 0 or 255);
`log_prob(name, out, x)` is log p(x | out) summed over pixels, shape (B,); `mean_image` gives
uint8 pictures of the decoder's mean, for grids and exported samples.
"""
import math

import jax
import jax.numpy as jnp
from absl import logging

from research.data import binarize as binarize_images
from research.numerics import softplus

LIKELIHOODS = ('bernoulli', 'logistic')
CHANNELS = {'bernoulli': 1, 'logistic': 2}  # decoder outputs per pixel
_HALF_BIN = 1.0 / 255.0  # half the width of one grey level on [-1, 1]
_MIN_LOG_SCALE = -7.0


def check_likelihood(name: str) -> None:
    if name not in LIKELIHOODS:
        raise ValueError(f'unknown likelihood {name!r}; known: {", ".join(LIKELIHOODS)}')


def prepare_images(name: str, train_images, eval_images, eval_name: str, *, binarize: str,
                   seed: int):
    """(train, evaluation) uint8 images as the likelihood `name` needs them, and a log line.

    Bernoulli scores binary pixels: the evaluation set is binarized once, from `seed`, so every
    evaluation sees the same bits; the training set too with binarize='fixed', while 'dynamic'
    leaves it grey for the step to draw afresh per batch (`target`). Grey levels are kept as
    they are for the logistic.
    """
    check_likelihood(name)
    if name == 'bernoulli':
        eval_images = binarize_images(eval_images, [seed, 1])
        if binarize == 'fixed':
            train_images = binarize_images(train_images, [seed, 0])
    what = ('256 grey levels, discretized logistic' if name == 'logistic' else
            f'Bernoulli on binarized pixels: train binarization {binarize}, {eval_name} '
            f'binarized once (seed {seed})')
    logging.info('train: %d examples, %s: %d examples; %s', len(train_images), eval_name,
                 len(eval_images), what)
    return train_images, eval_images


def target(name: str, images, key, dynamic: bool):
    """uint8 (B, H, W, 1) -> float32 data the likelihood scores."""
    check_likelihood(name)
    pixels = images.astype(jnp.float32) / 255.0
    if name == 'logistic':
        return pixels * 2.0 - 1.0
    if dynamic:
        return jax.random.bernoulli(key, pixels).astype(jnp.float32)
    return pixels  # already binarized to 0 / 255 once, from a seed (research.data.binarize)


def log_prob(name: str, out, x):
    """log p(x | out), summed over pixels.

    out (..., H, W, C) and x (..., H, W, 1) broadcast over their leading axes, so k decoder
    outputs (k, B, H, W, C) score one batch (B, H, W, 1) without copying it k times; -> (...).
    Pixels are flattened first: XLA:CPU reduces a trailing axis of size 1 about 5x slower.
    """
    check_likelihood(name)
    flat = lambda a: a.reshape(a.shape[:-3] + (-1, a.shape[-1]))
    out, x = flat(out), flat(x)[..., 0]
    if name == 'bernoulli':  # x*l - softplus(l) = -softplus(-l) if x = 1, -softplus(l) if x = 0
        per_pixel = -softplus((1.0 - 2.0 * x) * out[..., 0])
    else:
        per_pixel = _discretized_logistic(out[..., 0], out[..., 1], x)
    return jnp.sum(per_pixel, axis=-1)


def _discretized_logistic(mean, log_scale, x):
    """log P(bin of x) under Logistic(mean, exp(log_scale)); the end bins take the tails.

    With a = (x - mean + h)/s and b = (x - mean - h)/s the bin's mass is sigmoid(a) - sigmoid(b)
    = sigmoid(a) * sigmoid(-b) * (1 - exp(b - a)): a sum of logs that neither underflows nor
    cancels, so no fallback to the density is needed.
    """
    inv_scale = jnp.exp(-jnp.maximum(log_scale, _MIN_LOG_SCALE))
    a = inv_scale * (x - mean + _HALF_BIN)
    b = inv_scale * (x - mean - _HALF_BIN)
    log_cdf_a = -softplus(-a)   # log sigmoid(a) = log P(X < upper edge): all of bin 0's mass
    log_sf_b = -softplus(b)     # log sigmoid(-b) = log P(X > lower edge): all of bin 255's
    log_width = jnp.log(-jnp.expm1(b - a))   # b - a = -2h/s < 0
    inner = log_cdf_a + log_sf_b + log_width
    return jnp.where(x < -1 + _HALF_BIN, log_cdf_a, jnp.where(x > 1 - _HALF_BIN, log_sf_b, inner))


def mean_image(name: str, out):
    """The decoder's mean as uint8 (B, H, W, 1) pictures."""
    check_likelihood(name)
    if name == 'bernoulli':
        level = jax.nn.sigmoid(out)
    else:
        level = (jnp.clip(out[..., :1], -1, 1) + 1) / 2
    return jnp.round(level * 255).astype(jnp.uint8)


def bits_per_dim(nats, dims: int):
    return nats / (dims * math.log(2))
