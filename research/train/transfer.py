"""Fine-tuning from another run: `--config.init_from=WORKDIR[@STEP]` starts a new run from the
parameters of that run's checkpoint (the newest, or STEP's) whose names and shapes match.

    python -m experiments.classifier --config.init_from=runs/judge_mnist --workdir runs/ft
    python -m experiments.classifier --config.init_from=runs/dbn_fashion ...  # a DBN's stack

What is loaded: a state's model variables, the fields named `params`, `*_params`,
`*_batch_stats` and `*_ema` (research/objectives/*: TrainState, GANState, RBMState...), leaf by
leaf by name ('params/layers_0/kernel'), cast to this run's dtype. Optimizer state, step, RNG
and everything else start as this run's init makes them: a fine-tuning run is a new run, with
its own schedule. The log names what was loaded, what is new (this model has it, the source
does not) and what was skipped (the source has it, this model does not). A parameter present
in both with another shape stops the run with an error naming it, unless
`--config.init_partial=True`, which loads the rest and skips it.

A DBN's workdir (research/objectives/dbn.py; its layers in rbm_1, rbm_2, ... and no checkpoints
of its own) offers its greedy stack (each layer's newest checkpoint) as the sigmoid MLP it
unrolls into, exactly as the DBN's own fine-tuning starts (research.models.dbn.classifier_params:
hidden unit j of layer i computes p(h_j | the layer below)): what an MLP classifier of those
sizes (`model.activation=sigmoid`) loads, with a new output layer. A run of several phases
(the DBN) starts each phase from the same phase of the source, where the source has it.

The checkpoint is read as saved and verified against its digest (research.train.checkpoint)
on every process; a fresh run only: a run that resumes restores its own checkpoint instead.
"""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from research import files
from research.errors import ConfigError
from research.models import dbn as dbn_lib
from research.train.checkpoint import Checkpointer, named_leaves

_VARIABLES = re.compile(r'^(params|[a-z]+_params|[a-z]+_batch_stats|[a-z]+_ema)(/|$)')
_RBM = re.compile(r'^rbm_(\d+)$')


def parse(spec: str) -> tuple[str, int | None]:
    """'WORKDIR[@STEP]' -> (WORKDIR, STEP or None); a bad STEP is a ConfigError naming it."""
    where, at, step = spec.rpartition('@') if '@' in spec else (spec, '', '')
    if at and not re.fullmatch(r'\d+', step):
        raise ConfigError(f'init_from={spec!r}: the part after @ must be a step number '
                          f'(WORKDIR@STEP), got {step!r}')
    if not where:
        raise ConfigError(f'init_from={spec!r}: name a run directory (WORKDIR[@STEP])')
    return where, int(step) if at else None


def check(spec: str) -> None:
    """Before anything runs: init_from names a directory with checkpoints (or a DBN's
    layers); a ConfigError otherwise."""
    if spec:
        where, _ = parse(spec)
        if not files.exists(where):
            raise ConfigError(f'init_from={spec!r}: {where} is not a directory')
        if not (_has_checkpoints(where) or _dbn_layers(where)):
            raise ConfigError(f'init_from={spec!r}: {where} has neither checkpoints/ nor the '
                              'rbm_1/, rbm_2/, ... of a DBN run: is it a run directory?')


def phase(spec: str, name: str) -> str:
    """The source of phase `name` (a subdirectory of the run) of a run started from `spec`:
    that phase of the source where it has it, else '' (the phase starts as its init makes it)."""
    if not spec:
        return ''
    where, step = parse(spec)
    sub = os.path.join(where, name)
    if not _has_checkpoints(sub):
        logging.info('init_from: %s has no phase %s; that phase starts from its init', where,
                     name)
        return ''
    return sub + ('' if step is None else f'@{step}')


def _has_checkpoints(where: str) -> bool:
    return files.exists(os.path.join(where, 'checkpoints'))


def _dbn_layers(where: str) -> list[str]:
    """rbm_1, rbm_2, ... of a DBN run at `where` (local or a bucket), those with checkpoints."""
    path = epath.Path(where)
    names = [p.name for p in path.iterdir()] if path.is_dir() else []
    found = sorted((int(m.group(1)), d) for d in names if (m := _RBM.match(d)))
    dirs = [os.path.join(where, d) for _, d in found]
    return [d for d in dirs if _has_checkpoints(d)]


def source_variables(spec: str) -> tuple[str, dict]:
    """(what was read, {name: array}) of the model variables that `spec` offers."""
    where, step = parse(spec)
    if _has_checkpoints(where):
        at, arrays = _read(os.path.join(where, 'checkpoints'), step)
        return f'{where} at step {at}', {k: v for k, v in arrays.items() if _VARIABLES.match(k)}
    layers = _dbn_layers(where)
    if not layers:
        check(spec)  # names what is missing
    if step is not None:
        raise ConfigError(f'init_from={spec!r}: a DBN run is read at each layer\'s newest '
                          f'checkpoint; name one layer\'s directory ({layers[0]}@{step}) for a '
                          'step of it')
    rbms = []
    for layer in layers:
        _, arrays = _read(os.path.join(layer, 'checkpoints'), None)
        rbms.append({k: arrays[f'params/{k}'] for k in ('w', 'b_v', 'b_h')})
    mlp = dbn_lib.classifier_params(rbms, head={})
    variables = {f'params/{name}': np.asarray(x) for name, x in named_leaves(mlp).items()}
    return f'the DBN stack of {where} ({len(layers)} RBMs, as a sigmoid MLP)', variables


def _read(directory: str, step: int | None) -> tuple[int, dict]:
    checkpoints = Checkpointer(directory)
    try:
        return checkpoints.read(step)
    finally:
        checkpoints.close()


def load(state, spec: str, *, partial: bool = False) -> tuple[object, dict, list[str]]:
    """(`state` with the model variables `spec` offers put in by name, a report of what was
    loaded, new and skipped, its log lines). `state` is a fresh init. A shape mismatch is a
    ConfigError naming the parameter, unless `partial` (then it is skipped and reported)."""
    what, source = source_variables(spec)
    target = named_leaves(state)
    wanted = [k for k in target if _VARIABLES.match(k)]
    mismatched = [k for k in wanted if k in source and source[k].shape != target[k].shape]
    if mismatched and not partial:
        k = mismatched[0]
        raise ConfigError(
            f'init_from={spec!r}: {k} has shape {tuple(source[k].shape)} there and '
            f'{tuple(target[k].shape)} in this model ({len(mismatched)} such parameter(s)); '
            'use a source of the same architecture, or --config.init_partial=True to load the '
            'others and leave these as initialised')
    loaded = [k for k in wanted if k in source and k not in mismatched]
    new = [k for k in wanted if k not in source]
    unused = [k for k in source if k not in target]
    numbers = sum(source[k].size for k in loaded)
    lines = [f'init_from {what}: loaded {len(loaded)} arrays ({numbers:,} numbers): '
             f'{_names(loaded)}',
             f'init_from: new in this model (as initialised): {_names(new)}',
             f'init_from: skipped (not in this model): {_names(unused)}']
    if mismatched:
        lines.append('init_from: skipped for their shape (init_partial): ' + ', '.join(
            f'{k} {tuple(source[k].shape)} -> {tuple(target[k].shape)}' for k in mismatched))
    if not loaded:
        raise ConfigError(f'init_from={spec!r}: none of this model\'s parameters are in '
                          f'{what} (it has {_names(list(source))}); is it a run of this model?')
    take = set(loaded)
    leaves = [jnp.asarray(source[k], dtype=x.dtype) if k in take else x
              for k, x in target.items()]  # in the state's leaf order
    treedef = jax.tree_util.tree_structure(state)
    report = dict(init_from=spec, source=what, loaded=loaded, new=new, skipped=unused,
                  skipped_for_shape=mismatched, numbers=int(numbers))
    return jax.tree_util.tree_unflatten(treedef, leaves), report, lines


def _names(names: list[str], most: int = 8) -> str:
    if not names:
        return 'none'
    return ', '.join(names[:most]) + (f' and {len(names) - most} more' if len(names) > most
                                      else '')
