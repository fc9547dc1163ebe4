"""The command line of every experiment: --config, --workdir, --debug, and the absl main.

Also the run's config in the workdir (config.json), so a resumed run says what changed since it
started.
"""
import json
import os
import sys

import jax
from absl import logging

from research import files
from research.train import distributed


def _flatten(tree: dict, prefix: str = '') -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f'{prefix}{key}.'))
        else:
            flat[f'{prefix}{key}'] = value
    return flat


def save_config(config, workdir: str) -> dict:
    """Writes workdir/config.json; returns {key: (old, new)} for keys changed since last time."""
    path = os.path.join(workdir, 'config.json')
    new = json.loads(config.to_json())
    changed = {}
    if files.exists(path):
        with files.open(path) as f:
            old = _flatten(json.load(f))
        flat_new = _flatten(new)
        changed = {k: (old.get(k), flat_new.get(k)) for k in old.keys() | flat_new.keys()
                   if old.get(k) != flat_new.get(k)}
        for key, (was, now) in sorted(changed.items()):
            logging.warning('config.%s changed since this workdir was started: %r -> %r',
                            key, was, now)
    if jax.process_index() == 0:
        files.makedirs(workdir)
        with files.open(path, 'w') as f:
            json.dump(new, f, indent=2)
    return changed


def check_preset(experiment: str, preset: str, presets) -> None:
    """The first line of every get_config: an unknown preset names the known ones."""
    if preset not in presets:
        raise ValueError(f'unknown preset {preset!r} for {experiment}; presets: '
                         f'{", ".join(presets)}')


def define_flags(config_file: str, default_workdir: str) -> None:
    """--config (PATH[:PRESET] plus --config.KEY=VALUE overrides) and --workdir, for app.run.

    ml_collections reads the overrides from sys.argv while defining the flag and reports a key the
    config lacks as a bare AttributeError traceback; this names the override instead.
    """
    from absl import flags
    from ml_collections import config_flags
    try:
        config_flags.DEFINE_config_file('config', config_file, 'experiment config: PATH[:PRESET]')
    except (AttributeError, KeyError) as e:
        missing = str(e).strip('"\'')
        culprits = [a for a in sys.argv if a.startswith('--config.')
                    and missing in a.split('=')[0].split('.')[1:]]
        sys.exit(f'FATAL Flags parsing error: unknown config key {missing!r} in '
                 f'{" ".join(culprits) or "the --config overrides"}; an override can only set a '
                 f'key that get_config() in {config_file} defines')
    flags.DEFINE_string('workdir', None, f'run directory (default {default_workdir})')
    flags.DEFINE_bool('debug', False, 'for post-mortems: no jit (every op runs eagerly, so '
                      'pdb and prints work inside the step) and an error at the first NaN')


def enable_debug() -> None:
    """jax.disable_jit and jax_debug_nans for the rest of the process: the train loop then runs
    the step op by op, and the first operation that makes a NaN raises FloatingPointError."""
    jax.config.update('jax_disable_jit', True)
    jax.config.update('jax_debug_nans', True)
    logging.warning('--debug: jit is off and NaNs are errors; expect the run to be slow')


def experiment_main(name: str, run, check_config=None):
    """The absl `main` of an experiment: --workdir defaults to runs/NAME[_PRESET], and a config
    that `check_config` rejects stops with its message (not a traceback) before anything runs."""
    from absl import app, flags

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
        config = flags.FLAGS.config
        workdir = flags.FLAGS.workdir or os.path.join(
            'runs', name + ('' if config.preset == 'default' else f'_{config.preset}'))
        if check_config is not None:
            try:
                check_config(config)
            except ValueError as e:
                sys.exit(f'FATAL bad config: {e}')
        if flags.FLAGS.debug:
            enable_debug()
        try:
            distributed.initialize_if_requested()
        except ValueError as e:
            sys.exit(f'FATAL bad multi-process setup: {e}')
        run(config, workdir)

    return main
