"""Sample grids as PNG files."""
import math

import numpy as np
from PIL import Image

from research import files


def image_grid(images: np.ndarray, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 (N, H, W, C) -> one uint8 (rows*(H+pad)+pad, cols*(W+pad)+pad, C) image."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f'image_grid wants uint8 (N, H, W, C), got {images.dtype} {images.shape}')
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top:top + h, left:left + w] = image
    return grid


def save_png(path: str, image: np.ndarray, scale: int = 1) -> None:
    """Writes an (H, W, 1|3) uint8 image, optionally enlarged `scale` times (nearest neighbour)."""
    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    with files.open(path, 'wb') as f:  # local or in a bucket
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(f, format='PNG')
