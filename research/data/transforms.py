"""Dataset-level transforms, done once in numpy before batching.

  binarize   each pixel becomes 255 with probability pixel/255, else 0, from a seed: the fixed
             ("statically") binarized MNIST used to report likelihoods. (Dynamic binarization,
             a fresh draw per batch, happens inside the train step instead.)
  hold_out   splits off the last n examples of a seeded permutation as an evaluation set, for
             when no separate test split exists; experiments then name it 'heldout', never 'test'.

And one per batch, on numpy or jax arrays, inside a jitted step too:

  images_to_float   uint8 [0, 255] -> float32 [-1, 1], the range the networks read.
"""
import dataclasses

import numpy as np

from research.data.datasets import Split


def binarize(images: np.ndarray, seed) -> np.ndarray:
    """uint8 grey levels -> uint8 {0, 255}, P(255) = pixel / 255, reproducible from `seed` (anything
    numpy.random.default_rng takes)."""
    if images.dtype != np.uint8:
        raise ValueError(f'binarize expects uint8 pixels, got {images.dtype}')
    draws = np.random.default_rng(seed).random(images.shape, dtype=np.float32)
    return np.where(draws * 255 < images, 255, 0).astype(np.uint8)


def hold_out(split: Split, n: int, seed: int) -> tuple[Split, Split]:
    """(rest, held out n) of `split`, chosen by a permutation drawn from `seed`."""
    if not 0 < n < len(split.labels):
        raise ValueError(f'hold_out needs 0 < n < {len(split.labels)} (the size of '
                         f'{split.source}), got n={n}')
    order = np.random.default_rng(seed).permutation(len(split.labels))
    keep, held = np.sort(order[:-n]), order[-n:]  # held out in random order, not label order
    part = lambda idx, what: dataclasses.replace(
        split, images=split.images[idx], labels=split.labels[idx],
        source=f'{split.source}, {what}')
    return (part(keep, f'all but {n} held out (seed {seed})'),
            part(held, f'{n} held out (seed {seed})'))


def subset(split: Split, n: int, seed: int) -> Split:
    """n examples of `split` chosen by a permutation drawn from `seed` (in their order there)."""
    if not 0 < n < len(split.labels):
        raise ValueError(f'a subset of {split.source} needs 0 < n < {len(split.labels)}, '
                         f'got n={n}')
    idx = np.sort(np.random.default_rng(seed).permutation(len(split.labels))[:n])
    return dataclasses.replace(split, images=split.images[idx], labels=split.labels[idx],
                               source=f'{split.source}, {n} of them (seed {seed})')


def images_to_float(images):
    """uint8 [0, 255] -> float32 [-1, 1]. Only methods and operators, no numpy function, so a jax
    array stays a jax array (and traces under jit) and a numpy array stays numpy."""
    return images.astype(np.float32) / 127.5 - 1.0
