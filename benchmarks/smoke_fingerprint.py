"""Fingerprints of every experiment's smoke run, to show a refactor changed no number.

    python benchmarks/smoke_fingerprint.py record before.json          # all cases, ~5 min
    python benchmarks/smoke_fingerprint.py record after.json --cases gan vae
    python benchmarks/smoke_fingerprint.py record before8.json --devices 8  # 8 CPU devices
    python benchmarks/smoke_fingerprint.py compare before.json after.json

Each case runs one experiment's smoke preset from the command line, as a user would, in a fresh
workdir, then records what the run left behind: every array in samples*.npz (sha256 of the raw
bytes), every JSON result (results.json, classification.json, vocab.json), the PNG and text
outputs (sha256), each metrics.jsonl record without its wall-clock keys (`time`,
`examples_per_s`, `flops_per_s`), and every leaf of the final checkpoint (sha256 of its bytes, and its shape
and dtype). `compare` prints each difference by case and name, and exits 1 if there is one.

A case is an experiment, a preset and --config overrides. Where a refactor renames a config key
the case's overrides change with it (the CASES table says so); the maths must not.
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from research import errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WALL_CLOCK = ('time', 'examples_per_s', 'flops_per_s')

# name -> (experiment module, preset, overrides)
CASES = {
    'gan': ('gan_mnist', 'smoke', []),
    'gan_mlp_hinge': ('gan_mnist', 'smoke', ['--config.model.arch=mlp',
                                             '--config.loss.kind=hinge']),
    # Before the restructure of issue 13 this case was --config.loss.kind=wgan_gp.
    'gan_mlp_wgan_gp': ('gan_mnist', 'smoke', ['--config.model.arch=mlp',
                                               '--config.loss.kind=wasserstein',
                                               '--config.loss.penalty=gp']),
    'gan_population': ('gan_mnist', 'smoke', ['--config.model.arch=mlp', '--config.population=2',
                                              '--config.population_lr=(1e-4, 3e-4)']),
    'gan_fused': ('gan_mnist', 'smoke', ['--config.model.arch=mlp',
                                         '--config.train.steps_per_dispatch=2']),
    'vae': ('vae_mnist', 'smoke', []),
    'vae_conv_iwae': ('vae_mnist', 'smoke', ['--config.model.arch=conv',
                                             '--config.objective.kind=iwae',
                                             '--config.objective.k=3']),
    'vae_logistic_fused': ('vae_mnist', 'smoke', ['--config.model.likelihood=logistic',
                                                  '--config.train.steps_per_dispatch=2']),
    'dbn': ('dbn_mnist', 'smoke', []),
    'char_transformer': ('char_lm', 'smoke', []),
    'char_lstm': ('char_lm', 'smoke', ['--config.model.kind=lstm']),
    'char_gru': ('char_lm', 'smoke', ['--config.model.kind=gru']),
    'classifier_judge': ('classifier', 'smoke', []),
    'classifier_mlp': ('classifier', 'smoke', ['--config.model.arch=mlp',
                                               '--config.export_judge=False']),
    'rowwise': ('rowwise_mnist', 'smoke', []),
}


def sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def checkpoint_leaves(directory: str) -> dict:
    """{path: [sha256, shape, dtype]} of every leaf of the latest checkpoint in `directory`."""
    import jax
    import orbax.checkpoint as ocp
    steps = sorted(int(n) for n in os.listdir(directory) if n.isdigit())
    step = os.path.join(directory, str(steps[-1]))
    item = 'state' if os.path.isdir(os.path.join(step, 'state')) else 'default'  # before digests
    with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.restore(os.path.join(step, item))
    leaves = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        value = np.asarray(leaf)
        leaves[jax.tree_util.keystr(path)] = [sha(value.tobytes()), list(value.shape),
                                              str(value.dtype)]
    return {'step': steps[-1], 'leaves': leaves}


def fingerprint(workdir: str) -> dict:
    """Everything the run wrote that a refactor must not change, keyed by relative path."""
    found = {}
    for root, dirs, names in os.walk(workdir):
        dirs.sort()
        rel_root = os.path.relpath(root, workdir)
        if 'checkpoints' in dirs:
            found[os.path.join(rel_root, 'checkpoints')] = checkpoint_leaves(
                os.path.join(root, 'checkpoints'))
            dirs.remove('checkpoints')
        if 'tensorboard' in dirs:
            dirs.remove('tensorboard')
        for name in sorted(names):
            path, rel = os.path.join(root, name), os.path.normpath(os.path.join(rel_root, name))
            if name.endswith('.npz'):
                with np.load(path) as archive:
                    found[rel] = {key: [sha(archive[key].tobytes()), list(archive[key].shape),
                                        str(archive[key].dtype)] for key in archive.files}
            elif name == 'metrics.jsonl':
                with open(path, encoding='utf-8') as f:
                    found[rel] = [{k: v for k, v in json.loads(line).items()
                                   if k not in WALL_CLOCK} for line in f if line.strip()]
            elif name in ('run_info.json', 'config.json'):
                continue  # times, hosts, commits; the config is the case's
            elif name.endswith('.json'):
                with open(path, encoding='utf-8') as f:
                    found[rel] = json.load(f)
            else:  # PNG, text samples, judge.msgpack
                with open(path, 'rb') as f:
                    found[rel] = sha(f.read())
    return found


def record(cases, out: str, devices: int = 1) -> None:
    if devices > 1:  # the mesh, the sharded evaluators and the gradient all-reduce in play;
        # here too, before jax is imported: a checkpoint restores onto the devices it was saved on
        os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                                   f' --xla_force_host_platform_device_count={devices}')
    environment = dict(os.environ)
    results = {}
    for name in cases:
        module, preset, overrides = CASES[name]
        with tempfile.TemporaryDirectory() as tmp:
            workdir = os.path.join(tmp, 'run')
            command = [sys.executable, '-m', f'experiments.{module}',
                       f'--config=experiments/{module}.py:{preset}', f'--workdir={workdir}',
                       *overrides]
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                  env=environment)
            if done.returncode:
                sys.exit(f'case {name} failed ({done.returncode}):\n{done.stderr[-3000:]}')
            results[name] = {'command': command[2:], 'files': fingerprint(workdir)}
        print(f'recorded {name}: {len(results[name]["files"])} outputs', flush=True)
    with open(out, 'w', encoding='utf-8') as f:
        json.dump(results, f, indent=1, sort_keys=True)


def differences(a, b, where: str):
    """Yields 'where: ...' for every place a and b differ (dicts by key, lists by index)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys()):
            if key not in b:
                yield f'{where}/{key}: only in the first'
            elif key not in a:
                yield f'{where}/{key}: only in the second'
            else:
                yield from differences(a[key], b[key], f'{where}/{key}')
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from differences(x, y, f'{where}[{i}]')
    elif a != b:
        yield f'{where}: {str(a)[:100]} != {str(b)[:100]}'


def _read_fingerprint(path: str) -> dict:
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise errors.UserError(f'{path}: not a readable fingerprint file ({e})') from e


def main():
    parser = errors.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='verb', required=True)
    rec = sub.add_parser('record')
    rec.add_argument('out')
    rec.add_argument('--cases', nargs='*', choices=sorted(CASES), default=list(CASES))
    rec.add_argument('--devices', type=errors.positive_int, default=1, help='CPU devices per run')
    cmp = sub.add_parser('compare')
    cmp.add_argument('first')
    cmp.add_argument('second')
    args = parser.parse_args()
    if args.verb == 'record':
        record(args.cases, args.out, args.devices)
        return
    with errors.reported():
        first, second = _read_fingerprint(args.first), _read_fingerprint(args.second)
    found = 0
    for case in sorted(first.keys() & second.keys()):
        diffs = list(differences(first[case]['files'], second[case]['files'], case))
        found += len(diffs)
        print(f'{case}: ' + ('identical' if not diffs else f'{len(diffs)} differences'))
        for line in diffs[:40]:
            print('   ', line)
    missing = first.keys() ^ second.keys()
    if missing:
        print(f'cases in only one file: {", ".join(sorted(missing))}')
    sys.exit(1 if found or missing else 0)


if __name__ == '__main__':
    main()
