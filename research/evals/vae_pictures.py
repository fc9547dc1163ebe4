"""Pictures that show what a VAE learned, as uint8 grids (see research.train.images).

  reconstructions  rows of inputs, each followed by a row of their reconstructions (decoder
                   means at the posterior means)
  prior_samples    decoder means at z ~ N(0, I)
  interpolations   one row per pair of inputs: decoder means along the straight line between
                   their posterior means
  manifold         a 2-D latent only: decoder means on a grid of prior quantiles (Kingma &
                   Welling 2014, Fig. 4)
"""
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

from research.objectives import likelihoods
from research.train.images import image_grid


def pick(n: int, count: int, seed: int = 0) -> np.ndarray:
    """`count` indices spread over range(n) by a seeded draw; repeats only if n < count."""
    return np.random.default_rng(seed).choice(n, count, replace=n < count)


class VAEPictures:
    def __init__(self, vae, likelihood: str):
        self.likelihood = likelihood

        @jax.jit
        def encode(params, images):
            x = likelihoods.target(likelihood, images, None, dynamic=False)
            return vae.apply({'params': params}, x, method=vae.encode)[0]

        @jax.jit
        def decode(params, z):
            out = vae.apply({'params': params}, z, method=vae.decode)
            return likelihoods.mean_image(likelihood, out)

        self.encode, self.decode = encode, decode

    def reconstructions(self, params, images, columns: int = 8) -> np.ndarray:
        n = len(images) // columns * columns
        recon = np.asarray(self.decode(params, self.encode(params, images[:n])))
        pairs = np.stack([images[:n].reshape(-1, columns, *images.shape[1:]),
                          recon.reshape(-1, columns, *recon.shape[1:])], axis=1)
        return image_grid(pairs.reshape(-1, *images.shape[1:]), columns)

    def prior_samples(self, params, z) -> np.ndarray:
        return image_grid(np.asarray(self.decode(params, z)))

    def interpolations(self, params, starts, ends, steps: int = 10) -> np.ndarray:
        a, b = self.encode(params, starts), self.encode(params, ends)
        t = jnp.linspace(0.0, 1.0, steps)[None, :, None]
        z = (a[:, None] * (1 - t) + b[:, None] * t).reshape(-1, a.shape[-1])
        return image_grid(np.asarray(self.decode(params, z)), steps)

    def manifold(self, params, size: int = 20) -> np.ndarray:
        # Quantiles (i + 0.5) / size of N(0, 1) on each axis; rows run from high z_2 to low.
        q = np.asarray(ndtri((np.arange(size) + 0.5) / size))
        z = np.stack(np.meshgrid(q, q[::-1]), axis=-1).reshape(-1, 2)
        return image_grid(np.asarray(self.decode(params, jnp.asarray(z, jnp.float32))), size)
