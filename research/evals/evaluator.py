"""A per-example function over a whole dataset, each example counted exactly once.

`DatasetEvaluator` runs fn(params, examples, key) -> (B,) over every example in batches, the last
one padded and the padding dropped, so a mean over its output is over examples, never a mean of
per-batch means, and a test set of any size is handled exactly. Every whole-split number here
goes through it: the VAE's ELBO and IS-NLL, classifier predictions, the judges' features and
probabilities, and the language models' nats per character.
"""
import jax
import numpy as np

from research.train import mesh as mesh_lib


class DatasetEvaluator:
    """fn(params, images, key) -> (B,) over a whole dataset; returns all N values, in order.

    Batches are split over the mesh's `data` axis (default: every device); batch b uses
    fold_in(key, b), so results do not depend on the number of devices. Compiled once (the padded
    last batch has the same shape).

    With several processes (hosts) every process passes the same whole dataset and gets all N
    values back: each feeds its devices their rows of every batch, and each batch's (B,) output is
    gathered onto every device (replicated), so it can be read on every process. This is the one
    place an evaluation gathers across processes.
    """

    def __init__(self, fn, batch_size: int, mesh=None):
        mesh = mesh_lib.data_mesh() if mesh is None else mesh
        mesh_lib.check_batch_size(batch_size, mesh)
        self.batch_size, self._sharding = batch_size, mesh_lib.batch_sharded(mesh)
        self._fn = jax.jit(fn, in_shardings=(mesh_lib.replicated(mesh), self._sharding, None),
                           out_shardings=mesh_lib.replicated(mesh))

    def __call__(self, params, images: np.ndarray, key) -> np.ndarray:
        if len(images) == 0:
            raise ValueError('cannot evaluate on an empty dataset')
        pending = []
        for b, start in enumerate(range(0, len(images), self.batch_size)):
            batch = images[start:start + self.batch_size]
            valid = len(batch)
            if valid < self.batch_size:  # pad with copies of the first row; dropped below
                batch = np.concatenate([batch, np.repeat(batch[:1], self.batch_size - valid, 0)])
            values = self._fn(params, mesh_lib.from_global(batch, self._sharding),
                              jax.random.fold_in(key, b))
            pending.append((values, valid))  # dispatch everything before fetching anything
        return np.concatenate([np.asarray(v)[:valid] for v, valid in pending]).astype(np.float64)


def in_chunks(fn, x, size: int) -> np.ndarray:
    """fn over x in slices of `size` rows, concatenated as numpy: bounded memory (and one
    compiled shape, but for the last slice) however many rows x has."""
    return np.concatenate([np.asarray(fn(x[i:i + size])) for i in range(0, len(x), size)])
