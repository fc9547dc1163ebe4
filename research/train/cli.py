"""The command line of every experiment: --config, --workdir, --debug, and the absl main.

    if __name__ == '__main__':  # flags only when run, not when loaded as a config file
        cli.main(__file__, 'NAME', run, check_config)

A user mistake stops with one line, `FATAL <what and what would be valid>`, and exit status 2
(research.errors), before anything is compiled or written: an unknown preset or config key (with
the nearest key names), a value of the wrong type, a bad value that `check_config` or the common
checks below reject, a --workdir that is a file or is in use by another run
(research.train.workdir), data that no source has, a resumed workdir whose config changed what
its checkpoints mean. --debug shows the traceback instead. Compiled programs are cached on disk
(research.train.compile_cache, $DEEPGEN_CACHE_DIR). A run's own workdir files
(config.json, ...) are research.train.outputs'.
"""
import difflib
import importlib.util
import os
import sys

import jax
from absl import logging

from research import data, errors
from research.errors import ConfigError, UserError
from research.train import compile_cache, distributed, tracking, workdir as workdir_lib


def check_preset(experiment: str, preset: str, presets) -> None:
    """The first line of every get_config: an unknown preset names the known ones."""
    if preset not in presets:
        raise ConfigError(f'unknown preset {preset!r} for {experiment}; presets: '
                          f'{", ".join(presets)}')


def _flat_keys(config, prefix: str = '') -> list[str]:
    keys = []
    for key, value in config.items():
        keys.append(prefix + key)
        if hasattr(value, 'items'):
            keys += _flat_keys(value, f'{prefix}{key}.')
    return keys


def _config_value(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith('--config='):
            return arg.split('=', 1)[1]
        if arg == '--config' and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _load_config(config_file: str, value: str | None):
    """get_config(PRESET) of --config=PATH[:PRESET] (default: this experiment's file)."""
    path, _, preset = (value or config_file).partition(':')
    if not os.path.isfile(path):
        raise UserError(f'--config={value}: no file {path!r}; name an experiment file, e.g. '
                        f'{os.path.relpath(config_file)}[:PRESET]')
    main = sys.modules.get('__main__')
    if os.path.abspath(path) == os.path.abspath(getattr(main, '__file__', '') or ''):
        module = main
    else:
        spec = importlib.util.spec_from_file_location('_deepgen_config', path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    if not hasattr(module, 'get_config'):
        raise UserError(f'--config={value}: {path} defines no get_config()')
    return (module.get_config(preset) if preset else module.get_config()), path


def check_argv(argv: list[str], config_file: str) -> None:
    """Names an unknown preset, or an override of a key the config lacks (with the nearest key
    names), before ml_collections would raise its traceback."""
    config, path = _load_config(config_file, _config_value(argv))
    keys = _flat_keys(config)
    for arg in argv[1:]:
        if not arg.startswith(('--config.', '--noconfig.')):
            continue
        key = arg.split('=', 1)[0].split('config.', 1)[1]
        if key in keys:
            continue
        depth = key.count('.')
        near = difflib.get_close_matches(key, [k for k in keys if k.count('.') == depth], n=3,
                                         cutoff=0.6)
        raise UserError(f'unknown config key {key!r} in {arg}; '
                        + (f'did you mean {" or ".join(near)}? ' if near else '')
                        + f'the keys are those get_config() in {path} defines')


def run_options(c):
    """The options every experiment's config has, beside its own (get_config calls this last):

    profile       'START:STOP': a jax.profiler trace of those steps (research.train.loop)
    log.wandb     a Weights & Biases project to log to, beside TensorBoard (research.train.tracking)
    train.precision  'f32', or 'bf16': matmul and convolution inputs in bfloat16, for GPUs and
                  TPUs (research.train.precision)
    init_from     'WORKDIR[@STEP]': a new run starts from the parameters of that run whose names
                  and shapes match (research.train.transfer); init_partial=True loads them even
                  when others have another shape
    """
    c.profile = ''
    c.init_from, c.init_partial = '', False
    c.log = dict(wandb='')
    c.train.precision = 'f32'
    return c


def check_common(config) -> None:
    """Checks every experiment shares: the data source and dataset, the train schedule, the
    run options, and that every *.batch_size divides over the devices (call after
    distributed.initialize)."""
    from research.train import loop, mesh, precision, transfer
    if 'data' in config:
        if 'source' in config.data:
            data.check_source(config.data.source)
        if 'name' in config.data and config.data.name not in data.DATASETS:
            raise ConfigError(f'unknown dataset data.name={config.data.name!r}; datasets: '
                              f'{", ".join(data.DATASETS)}')
    if 'train' in config and 'steps' in config.train:
        loop.Schedule.of(config.train)
    if 'init_from' in config:
        transfer.check(config.init_from)
    if 'train' in config and 'precision' in config.train:
        try:
            precision.check(config.train.precision)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    loop.parse_profile(config.get('profile', ''))
    tracking.check(config)
    for key in _flat_keys(config):
        if key.endswith('batch_size'):
            value = config[key]
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f'{key} must be an integer >= 1, got {value!r}')
            mesh.check_batch_size(value, jax.device_count(), key)


def enable_debug() -> None:
    """jax.disable_jit and jax_debug_nans for the rest of the process: the train loop then runs
    the step op by op, and the first operation that makes a NaN raises FloatingPointError."""
    jax.config.update('jax_disable_jit', True)
    jax.config.update('jax_debug_nans', True)
    logging.warning('--debug: jit is off and NaNs are errors; expect the run to be slow')


def experiment_main(name: str, run, check_config=None):
    """The absl `main` of an experiment: --workdir defaults to runs/NAME[_PRESET]; the checks
    run first, then `run(config, workdir)` holds the workdir's lock."""
    from absl import flags

    def main(argv):
        debug = flags.FLAGS.debug
        with errors.reported(debug):
            if len(argv) > 1:
                raise UserError(f'unexpected arguments: {" ".join(argv[1:])}; the flags are '
                                '--config, --config.KEY=VALUE, --workdir and --debug')
            config = flags.FLAGS.config
            workdir = flags.FLAGS.workdir or os.path.join(
                'runs', name + ('' if config.preset == 'default' else f'_{config.preset}'))
            if debug:
                enable_debug()
            try:
                distributed.initialize_if_requested()
            except ValueError as e:
                raise UserError(f'bad multi-process setup: {e}') from e
            check_common(config)
            try:
                if check_config is not None:
                    check_config(config)
            except ValueError as e:
                raise ConfigError(f'bad config: {e}') from e
            data.reset_loaded()
            with workdir_lib.hold(workdir):
                workdir_lib.check_started_config(config, workdir)
                try:
                    with tracking.session(config, workdir):
                        run(config, workdir)
                except jax.errors.JaxRuntimeError as e:
                    if jax.process_count() == 1:
                        raise
                    raise errors.Fatal(distributed.lost_peer_message(e)) from e

    return main


def _flags_parser(config_file: str):
    """absl's flag parsing, with every mistake a FATAL line (exit status 2)."""
    from absl import flags

    def parse(argv):
        with errors.reported():
            compile_cache.configure()  # before anything is computed
            check_argv(argv, config_file)
            try:
                return flags.FLAGS(argv)
            except flags.Error as e:
                raise UserError(f'{e} (see --helpfull)') from e
    return parse


def main(config_file: str, name: str, run, check_config=None) -> None:
    """Defines --config (PATH[:PRESET] plus --config.KEY=VALUE overrides), --workdir and
    --debug, and runs the experiment under absl."""
    from absl import app, flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file('config', config_file, 'experiment config: PATH[:PRESET]')
    flags.DEFINE_string('workdir', None, f'run directory (default runs/{name}[_PRESET])')
    flags.DEFINE_bool('debug', False, 'for post-mortems: no jit (every op runs eagerly, so '
                      'pdb and prints work inside the step), an error at the first NaN, and '
                      'tracebacks instead of FATAL lines')
    app.run(experiment_main(name, run, check_config), flags_parser=_flags_parser(config_file))
