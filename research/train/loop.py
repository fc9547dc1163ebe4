"""The one training loop: an experiment brings the maths, the loop owns everything else.

    state = loop.train(config.train, workdir=workdir, seed=config.seed, init=init, step=step,
                       pipeline=pipeline, hooks=[loop.Every(500, evaluate)], final=[report])

The experiment gives `init(key) -> state` and a pure `step(state, batch) -> (state, metrics)`.
The loop
  * reads its schedule from config.train: `steps`, `log_every`, `checkpoint_every`, and
    optionally `steps_per_dispatch` (K > 1: K steps per call, research.train.fused),
    `max_to_keep` (checkpoints kept, default 3) and `precision` ('f32', or 'bf16': matmul and
    convolution inputs in bfloat16, research.train.precision); other keys (batch_size...) are
    the experiment's;
  * compiles init, called as init(PRNGKey(seed), *init_args), and the step, once each, for a
    one-axis `data` mesh over every device (state replicated, batch split); arrays that init
    needs (data statistics, an earlier phase's parameters) come as `init_args`, so they are
    arguments of the compiled init, not constants folded into it; with --debug (jit off) it runs
    op by op;
  * resumes from the newest intact checkpoint in workdir/checkpoints (research.train.checkpoint
    verifies each against its digest) if there is one: same parameters,
    optimizer state and RNG, and, since a batch is a pure function of (seed, step), the same
    next batch;
  * keeps per-step metrics on the device and fetches them at logging steps only, where it logs
    their mean over the window (progress line, metrics.jsonl, TensorBoard) and checks every
    step's values for NaN/inf; with them the throughput: examples/s, the step's FLOP rate
    (matmul and convolution FLOPs counted from its jaxpr, research.train.flops) and, on a
    device whose peak the flops table knows (GPUs, TPUs), model FLOP utilisation (`mfu`);
  * with `profile=(START, STOP)` (--config.profile=START:STOP) writes a jax.profiler trace of
    the steps after step START up to step STOP into workdir/profile (process 0), for
    TensorBoard's profile plugin or Perfetto;
  * saves a checkpoint every `checkpoint_every` steps and after the last, never of a non-finite
    state;
  * on SIGTERM (a preempted Cloud TPU VM, a `kill`) or Ctrl-C finishes the step in flight, saves
    a checkpoint and exits with status 143 (130 for Ctrl-C) and a message; the same command then
    resumes. With several processes they agree on the step through JAX's preemption sync point.

Hooks are fn(step, state, out) -> dict | None, where `out` (research.train.outputs.Outputs)
writes files on process 0 only. `Every(n, fn)` runs after every n-th step except the last. The
final hooks run once after the last step, and again whenever the command is rerun on a finished
run, so a periodic evaluation never repeats the final one. What a hook returns is logged at its
step: scalars to metrics.jsonl, TensorBoard and the log (a final hook's values replace that
step's earlier values of the same names), (H, W, C) uint8 images to TensorBoard.
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

from research import threefry
from research.data import Pipeline
from research.errors import ConfigError, Fatal
from research.train import (flops as flops_lib, fused, mesh as mesh_lib, precision, run_info,
                            transfer)
from research.train.checkpoint import Checkpointer
from research.train.metrics import MetricWriter, Progress
from research.train.outputs import Outputs

Hook = Callable[[int, Any, Outputs], 'dict | None']


class NonFiniteLossError(Fatal):
    """The run diverged: a loss or the state is NaN or infinite."""


class Preempted(SystemExit):
    """Raised after a SIGTERM (exit status 143 = 128 + 15) or a Ctrl-C (130 = 128 + 2) once the
    checkpoint is saved."""

    def __init__(self, message: str, status: int = 143):
        super().__init__(status)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclasses.dataclass(frozen=True)
class Every:
    """A periodic hook: fn(step, state, out) after every `steps`-th step but the last."""
    steps: int
    fn: Hook


@dataclasses.dataclass(frozen=True)
class Schedule:
    steps: int
    log_every: int
    checkpoint_every: int
    steps_per_dispatch: int = 1
    max_to_keep: int = 3

    @classmethod
    def of(cls, config) -> 'Schedule':
        """The loop's keys of config.train (a ConfigDict or a dict)."""
        given = {f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config}
        missing = [name for name in ('steps', 'log_every', 'checkpoint_every')
                   if name not in given]
        if missing:
            raise ConfigError(f'the train config lacks {", ".join(missing)}')
        schedule = cls(**given)
        for name, value in dataclasses.asdict(schedule).items():
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f'train.{name} must be an integer >= 1, got {value!r}')
        return schedule


def options(config, phase: str = '') -> dict:
    """The run options of `config` (research.train.cli.run_options) that `train` takes, for
    the loop in subdirectory `phase` of the run ('' for a run of one loop):
    `loop.train(..., **loop.options(config))`."""
    init_from = config.get('init_from', '')
    return dict(profile=config.get('profile', ''), init_partial=config.get('init_partial', False),
                init_from=transfer.phase(init_from, phase) if phase else init_from)


def parse_profile(text: str) -> tuple[int, int] | None:
    """--config.profile: '' (no profile) or 'START:STOP', 0 <= START < STOP."""
    if not text:
        return None
    try:
        start, stop = (int(part) for part in text.split(':'))
    except ValueError:
        raise ConfigError(f'profile={text!r}: give START:STOP, two step numbers, e.g. 10:20 '
                          'for the ten steps after step 10') from None
    if not 0 <= start < stop:
        raise ConfigError(f'profile={text!r}: need 0 <= START < STOP')
    return start, stop


class _Profile:
    """A jax.profiler trace of the steps START+1..STOP, on process 0."""

    def __init__(self, span, directory: str, progress: Progress):
        self.span, self.directory, self.progress = span, directory, progress
        self.tracing = False

    def before(self, at: int) -> None:
        if self.span and not self.tracing and self.span[0] <= at < self.span[1] \
                and jax.process_index() == 0:
            jax.profiler.start_trace(self.directory)
            self.tracing, self.first = True, at + 1

    def after(self, done: int, state) -> None:
        if self.tracing and done >= self.span[1]:
            self.stop(state, done)

    def stop(self, state, done: int) -> None:
        if self.tracing:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.tracing = False
            self.progress.message(f'profiled steps {self.first}-{done} into {self.directory}: '
                                  f'tensorboard --logdir {self.directory}, or open the '
                                  '.xplane.pb/.trace.json.gz in ui.perfetto.dev')


class _Preemption:
    """Whether to stop, for SIGTERM (a preempted Cloud TPU VM, a `kill`) or SIGINT (Ctrl-C): a
    flag in one process; JAX's preemption sync point (every process stops at the same step) in
    several, which a Ctrl-C joins by sending this process the SIGTERM that JAX listens for. A
    second Ctrl-C stops at once (KeyboardInterrupt), without a checkpoint."""

    def __init__(self):
        self.signal = None  # 'SIGTERM' or 'SIGINT', once received
        self._previous = {}
        self._multi = jax.process_count() > 1
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT,) if self._multi else (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        del frame
        if signum == signal.SIGINT and self.signal == 'SIGINT':
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        if signum == signal.SIGINT:
            os.write(2, b'\nCtrl-C: stopping after this step, with a checkpoint (press Ctrl-C '
                        b'again to stop at once, without one)\n')
            if self._multi:
                os.kill(os.getpid(), signal.SIGTERM)

    def reached(self, step: int) -> bool:
        if self._multi:
            from jax.experimental import multihost_utils
            if multihost_utils.reached_preemption_sync_point(step):
                self.signal = self.signal or 'SIGTERM'
                return True
            return False
        return self.signal is not None

    def close(self, signums=(signal.SIGTERM, signal.SIGINT)) -> None:
        """Restores the handlers that were there before (of `signums`)."""
        for signum in signums:
            if signum in self._previous:
                signal.signal(signum, self._previous.pop(signum))


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


def _rates(steps_per_s: float, global_batch: int, step_flops: int, mesh) -> dict:
    """examples_per_s, flops_per_s (the whole mesh's) and, where the peak is known, mfu."""
    rates = {'examples_per_s': steps_per_s * global_batch}
    if step_flops:
        rates['flops_per_s'] = steps_per_s * step_flops
        mfu = flops_lib.utilisation(rates['flops_per_s'], mesh.devices.flat[0].device_kind,
                                    mesh.size)
        if mfu is not None:
            rates['mfu'] = mfu
    return rates


def _check(schedule: Schedule, hooks, pipeline) -> None:
    k = schedule.steps_per_dispatch
    for i, hook in enumerate(hooks):
        if not isinstance(hook, Every) or not isinstance(hook.steps, int) or hook.steps < 1:
            raise ValueError(f'hook {i} must be loop.Every(n >= 1, fn), got {hook!r}')
    for name, value in [('train.steps', schedule.steps), ('train.log_every', schedule.log_every),
                        ('train.checkpoint_every', schedule.checkpoint_every),
                        *[(f'hook {i} every', h.steps) for i, h in enumerate(hooks)]]:
        if value % k:
            raise ConfigError(f'{name}={value} is not a multiple of steps_per_dispatch={k}')
    if not isinstance(pipeline, Pipeline):
        raise TypeError(f'{type(pipeline).__name__} is not a research.data.Pipeline: it needs '
                        'global_batch and batch(step)')
    if k > 1:
        fused.check_pipeline(pipeline, k)


def _run_hook(fn, step: int, state, out, writer, progress, replace: bool = False) -> float:
    """Calls one hook and logs what it returns; returns the seconds it took."""
    t0 = time.perf_counter()
    logged = fn(step, state, out) or {}
    for name, image in logged.items():
        if np.ndim(image) == 3:
            writer.image(step, name, image)
    scalars = {k: v for k, v in logged.items() if np.ndim(v) == 0}
    if scalars:
        writer.scalars(step, scalars, replace=replace)
        progress.message(f'step {step}: ' + ', '.join(f'{k} {v:.4g}' for k, v in scalars.items()))
    return time.perf_counter() - t0


def train(config, *, workdir: str, init: Callable, step: Callable, pipeline, seed: int = 0,
          init_args=(), hooks=(), final=(), mesh=None, outputs: Outputs | None = None,
          profile: str = '', init_from: str = '', init_partial: bool = False,
          compiler_options: dict | None = None):
    """Runs (or resumes) training to config.steps, then the final hooks; returns the state.

    `outputs` is what the hooks write through (default: Outputs(workdir)); a run made of several
    loops, each in a subdirectory, passes its top-level one. `profile` is 'START:STOP' or ''.
    `init_from` ('WORKDIR[@STEP]', research.train.transfer) puts another run's parameters into
    a fresh state (not a resumed one), `init_partial` allowing shape mismatches.
    `compiler_options`: XLA's, for the train step alone (research.xla_flags.without_ynnpack).
    """
    # ---- Schedule, mesh and input ------------------------------------------------------------
    schedule = Schedule.of(config)
    num_steps, k = schedule.steps, schedule.steps_per_dispatch
    hooks, final = tuple(hooks), tuple(final)
    _check(schedule, hooks, pipeline)
    try:
        step = precision.apply(step, config.get('precision', 'f32'))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    span = parse_profile(profile)
    mesh = mesh_lib.data_mesh() if mesh is None else mesh
    mesh_lib.check_batch_size(pipeline.global_batch, mesh)
    batch_at = lambda at: mesh_lib.to_global_batch(pipeline.batch(at), mesh)  # global batch `at`

    # ---- State: the latest checkpoint, else init(PRNGKey(seed), *init_args) ----------------------
    checkpoints = Checkpointer(os.path.join(workdir, 'checkpoints'), schedule.max_to_keep)
    progress = Progress(num_steps)
    with threefry.unrolled():  # an init is all draws: unrolled, it compiles faster
        state = jax.jit(init)(jax.random.PRNGKey(seed), *init_args)
    state = jax.device_put(state, mesh_lib.replicated(mesh))
    restored = checkpoints.restore_latest(state)
    if restored is not None:
        state = restored
        progress.message(f'resuming from the checkpoint at step {_step_of(state)} in '
                         f'{checkpoints.directory}')
    elif init_from:
        state, report, lines = transfer.load(state, init_from, partial=init_partial)
        state = jax.device_put(state, mesh_lib.replicated(mesh))
        for line in lines:
            progress.message(line)
        Outputs(workdir).json('init_from.json', report)
    start = _step_of(state)
    if start % k and start < num_steps:
        raise ConfigError(f'the checkpoint in {checkpoints.directory} is at step {start}, not a '
                          f'multiple of steps_per_dispatch={k}: resume with a K that divides it')

    # ---- Records: run_info.json, metrics.jsonl and TensorBoard, the hooks' files ----------------
    run_info.write_run_info(workdir, step=start)  # every (re)start: its time, code, hardware
    writer = MetricWriter(workdir, resume_step=start)
    out = outputs or Outputs(workdir)
    preemption = _Preemption()
    try:
        # ---- The compiled step ---------------------------------------------------------------
        step_flops = 0  # of one step, all devices together
        if start >= num_steps:
            progress.message(f'already trained {start} >= {num_steps} steps; running the final '
                             'hooks')
        elif jax.config.jax_disable_jit:  # --debug: op by op, so a debugger can step through it
            if k > 1:
                raise ConfigError('--debug runs one step at a time: use steps_per_dispatch=1')
            run_steps = lambda state, at: step(state, batch_at(at))
            progress.message('jit is disabled: running the train step op by op')
        else:
            t0 = time.perf_counter()
            traced = mesh_lib.jit_step(step, mesh, compiler_options).trace(state,
                                                                           batch_at(start))
            step_flops = flops_lib.jaxpr_flops(traced.jaxpr).flops
            if k > 1:
                run_steps = fused.FusedSteps(step, pipeline, mesh, k,
                                             compiler_options).compile(state, start)
            else:
                compiled = traced.lower().compile()
                run_steps = lambda state, at: compiled(state, batch_at(at))
            progress.message(f'compiled the train step in {time.perf_counter() - t0:.1f} s '
                             f'({mesh.size} device(s), global batch {pipeline.global_batch}'
                             + (f', {k} steps per dispatch' if k > 1 else '')
                             + f', {step_flops / 1e9:.3g} GFLOP per step'
                             + (f', XLA options {compiler_options}' if compiler_options else '')
                             + ')')

        # ---- Train: log, check, checkpoint, periodic hooks ------------------------------------
        window, window_start, t_window, hook_s = [], start, time.perf_counter(), 0.0
        previous = None
        profiler = _Profile(span, os.path.join(workdir, 'profile'), progress)
        for at in range(start, num_steps, k):
            profiler.before(at)
            state, metrics = run_steps(state, at)
            # At most two dispatches in flight: with more, XLA:CPU's threads on several
            # (virtual) devices can all wait in one step's collective for a device whose
            # thread is queued behind the next step, and abort after 40 s (measured: a
            # 300-step run on 8 CPU devices). Accelerators keep their overlap.
            jax.block_until_ready(previous)
            previous = metrics
            done = at + k  # steps are counted from 1: step n leaves state.step == n
            window.append((done, metrics))
            profiler.after(done, state)
            last = done == num_steps
            preempted = not last and preemption.reached(done)
            if done % schedule.log_every == 0 or done % schedule.checkpoint_every == 0 or last \
                    or preempted:
                means = _window_mean(window)
                elapsed = time.perf_counter() - t_window - hook_s  # hooks are not training
                steps_per_s = (done - window_start) / elapsed
                rates = _rates(steps_per_s, pipeline.global_batch, step_flops, mesh)
                progress.update(done, means, rates, (num_steps - done) / steps_per_s)
                writer.scalars(done, {**means, **rates})
                window, window_start, t_window, hook_s = [], done, time.perf_counter(), 0.0
            if done % schedule.checkpoint_every == 0 or last or preempted:
                if not bool(_all_finite(state)):
                    raise NonFiniteLossError(f'non-finite values in the train state at step {done}')
                checkpoints.save(done, state)
            if preempted:
                checkpoints.wait()
                ctrl_c = preemption.signal == 'SIGINT'
                message = (f'{"stopped by Ctrl-C" if ctrl_c else "preempted (SIGTERM)"} at step '
                           f'{done} of {num_steps}: saved a checkpoint in '
                           f'{checkpoints.directory}; run the same command to resume')
                progress.message(message)
                raise Preempted(message, 130 if ctrl_c else 143)
            for hook in hooks if not last else ():
                if done % hook.steps == 0:
                    hook_s += _run_hook(hook.fn, done, state, out, writer, progress)

        # ---- Final hooks: the last step is saved, so a Ctrl-C stops them at once ---------------
        profiler.stop(state, num_steps)  # a STOP beyond the last step
        preemption.close([signal.SIGINT])
        for fn in final:
            _run_hook(fn, max(start, num_steps), state, out, writer, progress, replace=True)
    except NonFiniteLossError as e:
        checkpoints.wait()
        good = checkpoints.verified_step
        where = (f'the last good (verified) checkpoint is step {good} in '
                 f'{checkpoints.directory}' if good is not None else 'no checkpoint was saved')
        raise NonFiniteLossError(f'{e}; stopping the run: {where}. Lower the learning rate, or '
                                 'rerun with --debug to stop at the first NaN') from None
    finally:
        preemption.close()
        progress.close()
        try:
            checkpoints.wait()
        finally:
            checkpoints.close()
            writer.close()
    return state
