"""The command line of every experiment: --config, --workdir, --debug, and the absl main.

    if __name__ == '__main__':  # flags only when run, not when loaded as a config file
        define_flags(__file__, 'runs/NAME[_PRESET]')
        app.run(experiment_main('NAME', run, check_config))

A bad config, dataset or multi-process setup stops with one FATAL line that names it, before
anything runs; a run's own workdir files (config.json, ...) are research.train.outputs'.
"""
import os
import sys

import jax
from absl import logging

from research import data
from research.train import distributed


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
    """The absl `main` of an experiment: --workdir defaults to runs/NAME[_PRESET]; a config that
    `check_config` rejects, data that no source has and a workdir made with another corpus stop
    with their message (not a traceback)."""
    from absl import app, flags

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
        config = flags.FLAGS.config
        workdir = flags.FLAGS.workdir or os.path.join(
            'runs', name + ('' if config.preset == 'default' else f'_{config.preset}'))
        try:
            if 'data' in config and 'source' in config.data:
                data.check_source(config.data.source)
            if check_config is not None:
                check_config(config)
        except ValueError as e:
            sys.exit(f'FATAL bad config: {e}')
        if flags.FLAGS.debug:
            enable_debug()
        try:
            distributed.initialize_if_requested()
        except ValueError as e:
            sys.exit(f'FATAL bad multi-process setup: {e}')
        data.reset_loaded()
        try:
            run(config, workdir)
        except (data.DatasetUnavailableError, data.CorpusChangedError) as e:
            sys.exit(f'FATAL {e}')
        except jax.errors.JaxRuntimeError as e:
            if jax.process_count() == 1:
                raise
            sys.exit(distributed.lost_peer_message(e))

    return main
