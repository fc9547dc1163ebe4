"""Weights & Biases beside TensorBoard: `--config.log.wandb=PROJECT` (pip install -e '.[wandb]').

    with tracking.session(config, workdir):   # research.train.cli does this for every experiment
        run(config, workdir)                  # every MetricWriter's scalars and images go to W&B

One W&B run per workdir, on process 0 only, with the experiment's config. It receives what
TensorBoard receives: each MetricWriter's scalars and (H, W, C) images, at their steps. A run
made of several loops (the DBN's layers and fine-tuning, each in a subdirectory of the workdir)
keeps each loop's values under its subdirectory's name (`rbm_1/loss`), against its own step
axis (`rbm_1/step`), since W&B's own step must only grow. The run's id is kept in
workdir/wandb_id.txt, so the same command after a preemption resumes the same W&B run (W&B
cannot take values back: the steps between the checkpoint and the preemption appear twice,
where metrics.jsonl and TensorBoard keep only the replayed ones). W&B's
files go to workdir/wandb; WANDB_MODE=offline keeps them there (`wandb sync` uploads them later).
Nothing imports wandb unless a project is named.
"""
import contextlib
import importlib.util
import os
import secrets

import numpy as np

_active = None  # (the wandb run, the session's workdir) while a session is open


def check(config) -> None:
    """A named project needs wandb installed: say how to get it, before anything runs."""
    if project(config) and importlib.util.find_spec('wandb') is None:
        from research.errors import ConfigError
        raise ConfigError(f'log.wandb={project(config)!r} needs the wandb package: pip install '
                          "-e '.[wandb]' (or leave log.wandb empty: TensorBoard only)")


def project(config) -> str:
    log = config.get('log') or {}
    return log.get('wandb', '') or ''


@contextlib.contextmanager
def session(config, workdir: str):
    """A W&B run around the command when config.log.wandb names a project (process 0)."""
    global _active
    import jax
    if not project(config) or jax.process_index() != 0:
        yield
        return
    import wandb
    id_file = os.path.join(workdir, 'wandb_id.txt')
    os.makedirs(workdir, exist_ok=True)
    if os.path.exists(id_file):
        with open(id_file) as f:
            run_id = f.read().strip()
    else:
        run_id = secrets.token_hex(4)  # W&B's own ids are 8 characters of [a-z0-9] too
        with open(id_file, 'w') as f:
            f.write(run_id + '\n')
    values = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
    run = wandb.init(project=project(config), id=run_id, resume='allow', dir=workdir,
                     name=os.path.basename(os.path.normpath(workdir)), config=values)
    _active = (run, workdir)
    _defined.clear()
    try:
        yield
    except BaseException:
        run.finish(exit_code=1)
        raise
    else:
        run.finish()
    finally:
        _active = None


_defined = set()  # the keys whose step axis is defined in the active run


def _log(workdir: str, step: int, values: dict) -> None:
    """Logs `values` of the writer in `workdir` under its prefix ('' at the top, 'rbm_1/' in a
    subdirectory), each key against that prefix's step axis (named key by key, not by a glob:
    a top-level '*' would also claim the subdirectories' keys)."""
    run, root = _active
    relative = os.path.relpath(os.path.abspath(workdir), os.path.abspath(root))
    prefix = '' if relative == '.' else relative.replace(os.sep, '/') + '/'
    axis = prefix + 'step'
    if axis not in _defined:
        run.define_metric(axis, hidden=True)
        _defined.add(axis)
    for key in values:
        if prefix + key not in _defined:
            run.define_metric(prefix + key, step_metric=axis)
            _defined.add(prefix + key)
    run.log({**{prefix + k: v for k, v in values.items()}, axis: step})


def scalars(workdir: str, step: int, values: dict) -> None:
    if _active is not None:
        _log(workdir, step, {k: float(v) for k, v in values.items()})


def image(workdir: str, step: int, name: str, picture: np.ndarray) -> None:
    if _active is not None:
        import wandb
        _log(workdir, step, {name: wandb.Image(np.asarray(picture))})
