"""Every model's train step at its README settings, and the fused-step and population variants,
on whatever device JAX sees: one JSON table. Synthetic batches: nothing to download.

    python -m benchmarks.accelerator --out bench_gpu.json    # one GPU: about 5 minutes
    python -m benchmarks.accelerator --smoke --out /tmp/b.json   # a few steps of each (CI, CPU)

Each model row is `benchmarks.bench.measure` (the experiment's own step, from its preset) at the
batch the README's speed table uses, with the step's FLOPs counted from its jaxpr
(research.train.flops), the FLOP rate and, where the device's peak is known, the model FLOP
utilisation (`mfu`, against the device's dense bf16 peak). The fused rows time K steps per
dispatch against one (`benchmarks.bench_scale fused`), the population rows N vmapped members
against one (`bench_scale population`). The table also names the device, its count, the jax
version, the date and the commit. `--smoke` keeps every row but runs each for a few steps at a
small batch: it checks that the command works, its numbers mean nothing. `--precision f32 bf16`
(the default) times every model row both ways (bf16: `--config.train.precision=bf16`, the
bfloat16 matmul inputs that a GPU's or TPU's matrix units run fastest; on a CPU only emulated);
the variants run in float32. Each row is printed to stderr as it is done, so a run cut short
still shows what it measured.
"""
import json
import sys
import time

import jax

from benchmarks import bench, bench_scale
from research import errors
from research.train import precision as precision_lib
from research.train.run_info import git_commit

# (model, batch, steps per timed repetition): the README's speed-table settings; on an
# accelerator a step takes milliseconds, so the repetitions are longer than on the CPU.
MODELS = (('dcgan', 128, 50), ('mlpgan', 128, 200), ('vae', 128, 200), ('convvae', 128, 50),
          ('rbm', 128, 200), ('charlstm', 64, 20), ('transformer', 12, 50))
VARIANTS = (('fused', 'mlpgan'), ('fused', 'vae'), ('population', 'mlpgan'),
            ('population', 'vae'))
SMOKE = dict(batch=4, steps=2, repeats=1, warmup=1, k=2, members=2)


def table(smoke: bool = False, only: tuple = (),
          precisions: tuple = precision_lib.PRECISIONS) -> dict:
    """The whole table: every model in each precision, then every variant (or those named in
    `only`)."""
    start = time.time()
    rows = []

    def done(row):
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    for model, batch, steps in MODELS:
        if only and model not in only:
            continue
        if smoke:
            batch, steps = min(batch, SMOKE['batch']), SMOKE['steps']
        repeats, warmup = (SMOKE['repeats'], SMOKE['warmup']) if smoke else (5, 3)
        for precision in precisions:
            done(bench.measure(model, batch, steps, repeats, warmup, precision=precision))
    for bench_name, model in VARIANTS:
        if only and f'{bench_name}-{model}' not in only:
            continue
        size = dict(steps=SMOKE['steps'], repeats=1) if smoke else dict(steps=100, repeats=5)
        batch = SMOKE['batch'] if smoke else 32
        if bench_name == 'fused':
            done(bench_scale.fused(model, batch, SMOKE['k'] if smoke else 10, **size))
        else:
            done(bench_scale.populations(model, batch, SMOKE['members'] if smoke else 8,
                                         **size))
    device = jax.devices()[0]
    return {'date': time.strftime('%Y-%m-%d', time.gmtime(start)), 'commit': git_commit(),
            'device': device.device_kind, 'platform': device.platform,
            'device_count': jax.device_count(), 'jax_version': jax.__version__,
            'smoke': smoke, 'seconds': round(time.time() - start, 1), 'rows': rows}


def main(argv=None):
    parser = errors.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', help='write the table here as JSON (it is printed too)')
    parser.add_argument('--smoke', action='store_true',
                        help='a few steps of each row at a small batch: does it run?')
    names = [m for m, _, _ in MODELS] + [f'{b}-{m}' for b, m in VARIANTS]
    parser.add_argument('--only', nargs='+', choices=names, default=(),
                        help='these rows only')
    parser.add_argument('--precision', nargs='+', choices=precision_lib.PRECISIONS,
                        default=precision_lib.PRECISIONS,
                        help='each model row in each of these')
    args = parser.parse_args(argv)
    with errors.reported():
        result = table(args.smoke, tuple(args.only), tuple(args.precision))
        text = json.dumps(result, indent=1)
        if args.out:
            with open(args.out, 'w', encoding='utf-8') as f:
                f.write(text + '\n')
    print(text, flush=True)


if __name__ == '__main__':
    main()
