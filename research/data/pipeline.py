"""Deterministic, restartable, process-sharded batches over in-memory arrays.

A batch is a pure function of (seed, step): there is no iterator state to
checkpoint, and resuming at step k costs the same as any other step (no
replaying the first k batches). Every process computes the same global
permutation from the seed and takes its own contiguous slice of each global
batch, so the processes together see exactly the global batch.

What the training loop relies on is a protocol, not this class: `Pipeline` (a global batch size
and `batch(step)`), and `IndexedPipeline` where every batch is rows of arrays that fit in memory,
which lets research/train/fused.py put the arrays on the device once and send only indices.
`BatchPipeline` and research/data/text.py's `WindowPipeline` are both IndexedPipelines.
"""

from collections.abc import Iterator
import itertools
import operator
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Pipeline(Protocol):
    """Batches as a pure function of the global step: this process's part of global batch `step`
    (global_batch rows over all processes together)."""
    global_batch: int

    def batch(self, step: int) -> dict[str, np.ndarray]: ...


@runtime_checkable
class IndexedPipeline(Pipeline, Protocol):
    """A Pipeline whose batches are gathered from `arrays`: for this process's rows,
    batch(step) == {key: arrays[key][indices(step)] for key in arrays}, exactly."""
    arrays: dict[str, np.ndarray]

    def indices(self, step: int) -> np.ndarray: ...


class BatchPipeline:
    """Shuffled batches of `arrays`, indexed by global step.

    Epoch e = step // steps_per_epoch visits the examples in the order
    `np.random.default_rng([seed, e]).permutation(N)`; global batch k of the
    epoch is rows perm[k * global_batch:(k + 1) * global_batch], and process p
    takes rows [p * local_batch:(p + 1) * local_batch] of that.

    The last N % global_batch examples of each epoch's permutation are
    dropped, so every batch is full. Since each epoch reshuffles, a different
    remainder is dropped each epoch and no example is left out for good.

    No prefetching: the data is already in memory and slicing a batch out of
    it takes microseconds, so a background thread would only add failure modes.
    """

    def __init__(self, arrays: dict[str, np.ndarray], global_batch: int,
                 seed: int, process_index: int | None = None,
                 process_count: int | None = None):
        if process_index is None or process_count is None:
            import jax  # only when asked to find out; keeps data tools light

            process_index = (jax.process_index() if process_index is None
                             else process_index)
            process_count = (jax.process_count() if process_count is None
                             else process_count)
        if not arrays:
            raise ValueError('arrays is empty; need at least one array')
        sizes = {key: len(value) for key, value in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(
                f'arrays must share their first dimension, got {sizes}')
        n = next(iter(sizes.values()))
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(f'need 0 <= process_index < process_count, got '
                             f'process_index={process_index}, '
                             f'process_count={process_count}')
        if global_batch < 1 or global_batch % process_count:
            raise ValueError(
                f'global_batch={global_batch} must be a positive multiple of '
                f'process_count={process_count}')
        if global_batch > n:
            raise ValueError(f'global_batch={global_batch} exceeds the '
                             f'{n} examples in arrays')
        if seed < 0:
            # numpy's SeedSequence rejects negative entropy.
            raise ValueError(f'seed must be non-negative, got {seed}')

        self.arrays = dict(arrays)
        self.num_examples = n
        self.global_batch = global_batch
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self.local_batch = global_batch // process_count
        self.steps_per_epoch = n // global_batch
        # Consecutive steps share an epoch; keep its permutation around. One
        # tuple, so a reader never pairs one epoch with another's permutation.
        self._cached: tuple[int, np.ndarray] | None = None

    def indices(self, step: int) -> np.ndarray:
        """Which rows of `arrays` make this process's part of global batch number `step`."""
        step = operator.index(step)
        if step < 0:
            raise ValueError(f'step must be non-negative, got {step}')
        epoch, k = divmod(step, self.steps_per_epoch)
        start = k * self.global_batch + self.process_index * self.local_batch
        return self._epoch_permutation(epoch)[start:start + self.local_batch]

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of global batch number `step`."""
        rows = self.indices(step)
        return {key: value[rows] for key, value in self.arrays.items()}

    def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Endless batch(start_step), batch(start_step + 1), ..."""
        start_step = operator.index(start_step)
        # Checked here rather than on the first next(), so a bad resume step
        # fails where it is passed in.
        if start_step < 0:
            raise ValueError(
                f'start_step must be non-negative, got {start_step}')
        return map(self.batch, itertools.count(start_step))

    def _epoch_permutation(self, epoch: int) -> np.ndarray:
        cached = self._cached
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            cached = (epoch, rng.permutation(self.num_examples))
            self._cached = cached
        return cached[1]
