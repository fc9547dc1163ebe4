"""The one training loop: it owns resumption, the step schedule, logging and checkpoints.

An experiment hands it an initial state, a pure `step(state, batch) -> (state, metrics)`, a
`BatchPipeline` and periodic hooks (sample grids, evaluations, exports). The loop

  * resumes from the latest checkpoint in `workdir/checkpoints` if there is one: same parameters,
    optimizer state and RNG, and since a batch is a pure function of (seed, step), the same next
    batch;
  * compiles the step once, ahead of time, for the mesh (so a retrace is an error, not a slowdown);
  * keeps per-step metrics on the device and fetches them only at logging steps, where it logs
    their mean over the window and checks every step's losses for NaN/inf;
  * saves a checkpoint every `checkpoint_every` steps and at the end, never of a non-finite state;
  * on SIGTERM (what a preempted Cloud TPU VM or a `kill` sends) finishes the current step, saves
    a checkpoint and exits with status 143 and a message; the same command then resumes. With
    several processes they agree on the step through JAX's preemption sync point.
"""
import dataclasses
import os
import signal
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from research.train import mesh as mesh_lib, run_info
from research.train.checkpoint import Checkpointer
from research.train.fused import FusedSteps
from research.train.metrics import MetricWriter, Progress


class NonFiniteLossError(RuntimeError):
    pass


class Preempted(SystemExit):
    """Raised after a SIGTERM once the checkpoint is saved: exit status 143 (128 + SIGTERM)."""

    def __init__(self, message: str):
        super().__init__(143)
        self.message = message

    def __str__(self) -> str:
        return self.message


class _Preemption:
    """Whether to stop for a preemption notice: a SIGTERM flag in one process; JAX's preemption
    sync point (every process stops at the same step) in several."""

    def __init__(self):
        self.received = False
        self._previous = None
        self._multi = jax.process_count() > 1
        if not self._multi and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.received = True

    def reached(self, step: int) -> bool:
        if self._multi:
            from jax.experimental import multihost_utils
            return multihost_utils.reached_preemption_sync_point(step)
        return self.received

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass
class Hook:
    """fn(step, state) every `every` steps (and after the last step if `at_end`).

    It may return a dict of values to log (scalars, or (H, W, C) uint8 images for TensorBoard).
    """
    every: int
    fn: Callable[[int, Any], dict | None]
    at_end: bool = True


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _step_of(state) -> int:
    """state.step: a scalar, or one per member of a population (all equal)."""
    steps = np.unique(np.asarray(jax.device_get(state.step)))
    if len(steps) != 1:
        raise ValueError(f'the members of the state are at different steps: {steps.tolist()}')
    return int(steps[0])


def _window_mean(window: list[tuple[int, dict]]) -> dict:
    """Mean of each metric over the window; raises at the first step with a non-finite value.

    An entry is (last step, metrics): scalars for one step, or (K,) arrays for K fused steps.
    """
    fetched = jax.device_get([metrics for _, metrics in window])
    for (last, _), metrics in zip(window, fetched):
        values = {k: np.atleast_1d(v) for k, v in metrics.items()}
        count = len(next(iter(values.values())))
        for j in range(count):
            bad = {k: float(v[j]) for k, v in values.items() if not np.isfinite(v[j])}
            if bad:
                raise NonFiniteLossError(
                    f'non-finite loss at step {last - count + 1 + j}: '
                    + ', '.join(f'{k}={v}' for k, v in bad.items()))
    return {k: float(np.mean(np.concatenate([np.atleast_1d(m[k]) for m in fetched])))
            for k in fetched[0]}


def train(*, workdir: str, state, step_fn, pipeline, mesh, num_steps: int, log_every: int,
          checkpoint_every: int, hooks: tuple[Hook, ...] = (), max_to_keep: int = 3,
          steps_per_dispatch: int = 1):
    """Runs (or resumes) training to `num_steps`; returns the final state.

    `steps_per_dispatch` K > 1 keeps the dataset on the device and runs K steps per call
    (research.train.fused): the same steps, fewer round trips from Python. Every interval
    (num_steps, log_every, checkpoint_every, each hook's `every`) must then be a multiple of K.
    """
    k = steps_per_dispatch
    for name, value in [('num_steps', num_steps), ('log_every', log_every),
                        ('checkpoint_every', checkpoint_every), ('steps_per_dispatch', k)]:
        if value < 1:
            raise ValueError(f'{name} must be >= 1, got {value}')
    for name, value in [('num_steps', num_steps), ('log_every', log_every),
                        ('checkpoint_every', checkpoint_every),
                        *[(f'hook {i} every', h.every) for i, h in enumerate(hooks)]]:
        if value % k:
            raise ValueError(f'{name}={value} is not a multiple of steps_per_dispatch={k}')
    mesh_lib.check_batch_size(pipeline.global_batch, mesh)
    batch_at = lambda at: mesh_lib.to_global_batch(pipeline.batch(at), mesh)  # global batch `at`
    checkpoints = Checkpointer(os.path.join(workdir, 'checkpoints'), max_to_keep)
    progress = Progress(num_steps)

    state = jax.device_put(state, mesh_lib.replicated(mesh))
    restored = checkpoints.restore_latest(state)
    if restored is not None:
        state = restored
        progress.message(f'resuming from the checkpoint at step {_step_of(state)} in '
                         f'{checkpoints.directory}')
    start = _step_of(state)
    if start % k and start < num_steps:
        raise ValueError(f'the checkpoint in {checkpoints.directory} is at step {start}, not a '
                         f'multiple of steps_per_dispatch={k}: resume with a K that divides it')
    run_info.write_run_info(workdir, step=start)  # every (re)start: its time, code, hardware
    writer = MetricWriter(workdir, resume_step=start)
    if start >= num_steps:
        progress.message(f'already trained {start} >= {num_steps} steps; running the end hooks')
        for hook in hooks:
            if hook.at_end:
                hook.fn(start, state)
    elif jax.config.jax_disable_jit:  # --debug: op by op, so a debugger can step through it
        if k > 1:
            raise ValueError('--debug runs one step at a time: use steps_per_dispatch=1')
        step = lambda state, at: step_fn(state, batch_at(at))
        progress.message('jit is disabled: running the train step op by op')
    else:
        t0 = time.perf_counter()
        if k > 1:
            step = FusedSteps(step_fn, pipeline, mesh, k).compile(state, start)
        else:
            compiled = mesh_lib.jit_step(step_fn, mesh).lower(state, batch_at(start)).compile()
            step = lambda state, at: compiled(state, batch_at(at))
        progress.message(f'compiled the train step in {time.perf_counter() - t0:.1f} s '
                         f'({mesh.size} device(s), global batch {pipeline.global_batch}'
                         + (f', {k} steps per dispatch' if k > 1 else '') + ')')
    last_good = checkpoints.latest_step()

    window, window_start, t_window, hook_s = [], start, time.perf_counter(), 0.0
    preemption = _Preemption()
    try:
        for at in range(start, num_steps, k):
            state, metrics = step(state, at)
            done = at + k  # steps are counted from 1: step n leaves state.step == n
            window.append((done, metrics))
            last = done == num_steps
            preempted = not last and preemption.reached(done)
            if done % log_every == 0 or done % checkpoint_every == 0 or last or preempted:
                means = _window_mean(window)
                elapsed = time.perf_counter() - t_window - hook_s  # hooks are not training
                steps_per_s = (done - window_start) / elapsed
                examples_per_s = steps_per_s * pipeline.global_batch
                progress.update(done, means, examples_per_s, (num_steps - done) / steps_per_s)
                writer.scalars(done, {**means, 'examples_per_s': examples_per_s})
                window, window_start, t_window, hook_s = [], done, time.perf_counter(), 0.0
            if done % checkpoint_every == 0 or last or preempted:
                if not bool(_all_finite(state)):
                    raise NonFiniteLossError(f'non-finite values in the train state at step {done}')
                checkpoints.save(done, state)
                last_good = done
            if preempted:
                checkpoints.wait()
                message = (f'preempted (SIGTERM) at step {done} of {num_steps}: saved a '
                           f'checkpoint in {checkpoints.directory}; run the same command to '
                           f'resume')
                progress.message(message)
                raise Preempted(message)
            for hook in hooks:
                if done % hook.every == 0 or (last and hook.at_end):
                    t_hook = time.perf_counter()
                    logged = hook.fn(done, state) or {}
                    for name, image in logged.items():
                        if np.ndim(image) == 3:
                            writer.image(done, name, image)
                    scalars = {k: v for k, v in logged.items() if np.ndim(v) == 0}
                    if scalars:
                        writer.scalars(done, scalars)
                        progress.message(f'step {done}: ' + ', '.join(
                            f'{k} {v:.4g}' for k, v in scalars.items()))
                    hook_s += time.perf_counter() - t_hook
    except NonFiniteLossError as e:
        where = (f'the last good checkpoint is step {last_good} in {checkpoints.directory}'
                 if last_good is not None else 'no checkpoint was saved')
        raise NonFiniteLossError(f'{e}; stopping the run: {where}') from None
    finally:
        preemption.close()
        progress.close()
        checkpoints.wait()
        checkpoints.close()
        writer.close()
    return state
