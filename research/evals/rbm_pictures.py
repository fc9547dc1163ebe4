"""Pictures of what an RBM or DBN learned, as uint8 grids (see research.train.images).

  filter_grid   the weights of hidden units into the pixels, one image-shaped tile per unit:
                mid grey is 0, white positive, black negative, each tile scaled to its own
                largest |w| (so weak units show their shape too); strokes and blobs mean the
                units learned local features, noise means they did not learn yet
  pixel_grid    pixel means in [0, 1] (samples, chain snapshots) as a grid
"""
import numpy as np

from research.train.images import image_grid


def filter_grid(w, image_shape, count: int = 100, columns: int = 10) -> np.ndarray:
    """w (V, H) -> a grid of the first `count` hidden units' weights as (H, W, C) tiles."""
    w = np.asarray(w, np.float32)
    if w.shape[0] != int(np.prod(image_shape)):
        raise ValueError(f'filters of {w.shape[0]} visible units cannot be {image_shape} images')
    tiles = w[:, :count].T
    scale = np.maximum(np.abs(tiles).max(axis=1, keepdims=True), 1e-12)
    tiles = np.round(127.5 + 127.5 * tiles / scale).astype(np.uint8)
    return image_grid(tiles.reshape(-1, *image_shape), columns)


def pixel_grid(pixels, image_shape, columns: int = 10) -> np.ndarray:
    """(N, V) floats in [0, 1] -> a grid of N images of `image_shape`."""
    pixels = np.clip(np.asarray(pixels, np.float32), 0.0, 1.0)
    images = np.round(255.0 * pixels).astype(np.uint8).reshape(-1, *image_shape)
    return image_grid(images, columns)
