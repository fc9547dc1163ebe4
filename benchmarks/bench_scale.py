"""Throughput of the scaling options, each against what it replaces, in one process:

    python -m benchmarks.bench_scale fused mlpgan --batch 32 --k 10    # K steps per dispatch
    python -m benchmarks.bench_scale population mlpgan --members 8     # N members in one program

`fused` times the loop's two ways of feeding a step from a `BatchPipeline` over 10,000 random
images: one step per call (numpy batch, host-to-device copy, dispatch) and K steps per call
(research.train.fused: the dataset on the device, a scan over K steps). `population` times one
step of N vmapped MLP-GAN members against one member; the N runs made one after another would
have the single run's examples/s, so the ratio is what one program gains. Each prints one JSON
line; examples/s count every member's examples, medians over --repeats timings.
"""
import json
import statistics
import time

import jax
import numpy as np

from benchmarks.bench import IMAGE_SHAPE
from experiments import gan_mnist, vae_mnist
from research import errors
from research.data import BatchPipeline
from research.train import mesh as mesh_lib, population
from research.train.fused import FusedSteps


def setup(model: str):
    """(init(key) -> state, step) of gan_mnist's mlp preset or vae_mnist's default, built by
    the experiment's own `build`."""
    experiment, preset = (gan_mnist, 'mlp') if model == 'mlpgan' else (vae_mnist, 'default')
    return experiment.build(experiment.get_config(preset), IMAGE_SHAPE)[1:]


def rate(run, calls: int, repeats: int) -> float:
    """Median calls per second of run(i) over `repeats` timings of `calls` calls."""
    run(0)  # warm-up
    rates = []
    for r in range(repeats):
        t0 = time.perf_counter()
        for i in range(calls):
            out = run(1 + r * calls + i)
        jax.block_until_ready(out)
        rates.append(calls / (time.perf_counter() - t0))
    return statistics.median(rates)


def fused(model: str, batch: int, k: int, steps: int, repeats: int) -> dict:
    init, step_fn = setup(model)
    mesh = mesh_lib.data_mesh()
    images = np.random.default_rng(0).integers(0, 256, (10_000, 28, 28, 1), dtype=np.uint8)
    pipeline = BatchPipeline({'image': images}, batch, seed=0)
    holder = {'state': jax.device_put(jax.jit(init)(jax.random.PRNGKey(0)),
                                      mesh_lib.replicated(mesh))}
    single = mesh_lib.jit_step(step_fn, mesh).lower(
        holder['state'], mesh_lib.to_global_batch(pipeline.batch(0), mesh)).compile()
    many = FusedSteps(step_fn, pipeline, mesh, k).compile(holder['state'], 0)

    def one(i):
        holder['state'], metrics = single(holder['state'],
                                          mesh_lib.to_global_batch(pipeline.batch(i), mesh))
        return metrics

    def dispatch(i):
        holder['state'], metrics = many(holder['state'], i * k)
        return metrics

    single_rate = rate(one, steps, repeats) * batch
    fused_rate = rate(dispatch, max(1, steps // k), repeats) * k * batch
    return {'bench': 'fused', 'model': model, 'batch': batch, 'k': k,
            'single_examples_per_s': round(single_rate, 1),
            'fused_examples_per_s': round(fused_rate, 1),
            'speedup': round(fused_rate / single_rate, 3), 'backend': jax.default_backend()}


def populations(model: str, batch: int, members: int, steps: int, repeats: int) -> dict:
    init, step_fn = setup(model)
    data = {'image': jax.numpy.asarray(np.random.default_rng(0).integers(
        0, 256, (batch, 28, 28, 1), dtype=np.uint8))}
    results = {}
    for n in (1, members):
        states = jax.jit(jax.vmap(init))(population.member_keys(0, n))
        step = jax.jit(population.make_population_step(step_fn, n), donate_argnums=0)
        holder = {'state': states}

        def run(i):
            holder['state'], metrics = step(holder['state'], data)
            return metrics

        results[n] = rate(run, steps, repeats) * batch * n
    return {'bench': 'population', 'model': model, 'batch': batch, 'members': members,
            'one_member_examples_per_s': round(results[1], 1),
            'population_examples_per_s': round(results[members], 1),
            'speedup': round(results[members] / results[1], 3),
            'backend': jax.default_backend()}


def main(argv=None):
    parser = errors.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('bench', choices=['fused', 'population'])
    parser.add_argument('model', choices=['mlpgan', 'vae'])
    parser.add_argument('--batch', type=errors.positive_int, default=32)
    parser.add_argument('--k', type=errors.positive_int, default=10,
                        help='steps per dispatch (fused)')
    parser.add_argument('--members', type=errors.positive_int, default=8, help='population size')
    parser.add_argument('--steps', type=errors.positive_int, default=50,
                        help='steps per timed repetition')
    parser.add_argument('--repeats', type=errors.positive_int, default=5)
    args = parser.parse_args(argv)
    with errors.reported():
        if args.bench == 'fused':
            result = fused(args.model, args.batch, args.k, args.steps, args.repeats)
        else:
            result = populations(args.model, args.batch, args.members, args.steps, args.repeats)
    print(json.dumps(result), flush=True)


if __name__ == '__main__':
    main()
