"""What an RBM (or a DBN's layer) learned: its monitors, its log-likelihood by AIS, pictures.

  monitors         the mean free energy and pseudo-likelihood on training and evaluation
                   examples, and the free-energy gap between them: Hinton's practical guide
                   (2010, section 6) watches a held-out free energy drifting above the training
                   one as the sign of overfitting
  log_likelihoods  log Z by annealed importance sampling (research/evals/ais.py) from the base
                   rate of the training pixels, and the mean log p(v) it gives on each split
  dbn_bounds       the whole DBN's variational lower bound on log p(v) and its importance-
                   sampled estimate (research/evals/dbn_bound.py) over a split, with the top
                   RBM's AIS log Z
  dbn_pictures     samples of a DBN and snapshots of its chains (chains_grid: a row each)
  filter_grid      the weights of hidden units into the pixels, one image-shaped tile per unit:
                   mid grey is 0, white positive, black negative, each tile scaled to its own
                   largest |w| (so weak units show their shape too); strokes and blobs mean
                   the units learned local features, noise means they did not learn yet
  pixel_grid       pixel means in [0, 1] (samples, chain snapshots) as a grid
"""
import jax
import numpy as np

from research.evals import ais, dbn_bound
from research.evals.evaluator import DatasetEvaluator, in_chunks
from research.models import dbn as dbn_lib, rbm as rbm_lib
from research.objectives import rbm as rbm_objectives
from research.train.images import image_grid

_monitors = jax.jit(rbm_objectives.monitors)
_log_likelihood = jax.jit(ais.log_likelihood)


def monitors(params, train, evaluation, name: str, key) -> dict:
    """{'monitor/...': float} on (V,)-unit examples of the training and the `name` split."""
    tr = jax.device_get(_monitors(params, train, key))
    te = jax.device_get(_monitors(params, evaluation, key))
    return {'monitor/train_free_energy': float(tr['free_energy']),
            f'monitor/{name}_free_energy': float(te['free_energy']),
            'monitor/free_energy_gap': float(te['free_energy'] - tr['free_energy']),
            'monitor/train_pseudo_likelihood': float(tr['pseudo_likelihood']),
            f'monitor/{name}_pseudo_likelihood': float(te['pseudo_likelihood'])}


def log_partition(params, key, *, betas: int, runs: int, marginals) -> dict:
    """{'log_z', 'log_z_spread'} of an RBM by AIS: `runs` runs over `betas` inverse temperatures
    in Salakhutdinov & Murray's schedule, from the base-rate model of the data marginals (V,)
    that the RBM was trained on."""
    log_z, spread = jax.jit(lambda params, key, base: ais.ais_log_partition(
        params, key, betas=ais.default_betas(betas), n_runs=runs, base_visible_bias=base))(
            params, key, rbm_lib.marginal_bias(marginals))
    return {'log_z': float(log_z), 'log_z_spread': float(spread)}


def _mean_sem(values, prefix: str) -> dict:
    """{prefix: mean, prefix_sem: its standard error} of per-example values."""
    return {prefix: float(values.mean()),
            f'{prefix}_sem': float(values.std() / np.sqrt(len(values)))}


def log_likelihoods(params, key, *, betas: int, runs: int, train, evaluation,
                    name: str) -> dict:
    """AIS log Z (`log_partition`, from `train`'s pixel marginals), its spread, and the mean
    log-likelihood in nats with its standard error on `train` and on the `name` split (binary
    (N, V) arrays, in slices of 5,000 rows)."""
    z = log_partition(params, key, betas=betas, runs=runs, marginals=train.mean(0))
    values = {'ais/log_z': z['log_z'], 'ais/log_z_spread': z['log_z_spread']}
    for split, v in (('train', train), (name, evaluation)):
        ll = in_chunks(lambda x: _log_likelihood(params, x, z['log_z']), v, 5000)
        values.update(_mean_sem(ll, f'{split}/log_likelihood'))
    return values


def dbn_bounds(layers, key, log_z: dict, *, evaluation, name: str, samples: int, k: int,
               batch_size: int, recognition=None) -> dict:
    """The DBN `layers`' variational bound on log p(v), each example's from `samples` draws of
    q(h | v) (the tied weights, or `recognition`), and with k > 0 its importance-sampled
    estimate from k draws, both as the mean over the binary (N, V) `evaluation` split with its
    standard error, in nats; `log_z` is `log_partition`'s for the top RBM."""
    values = {'dbn/log_z': log_z['log_z'], 'dbn/log_z_spread': log_z['log_z_spread']}
    estimates = {'dbn_bound': lambda p, v, key: dbn_bound.variational_bound(
        p[0], v, key, p[1], samples=samples, recognition=p[2])}
    if k:
        estimates['dbn_is_log_likelihood'] = lambda p, v, key: (
            dbn_bound.importance_log_likelihood(p[0], v, key, p[1], k=k, recognition=p[2]))
    for i, (metric, fn) in enumerate(estimates.items()):
        per_example = DatasetEvaluator(fn, batch_size)(
            (layers, log_z['log_z'], recognition), np.asarray(evaluation),
            jax.random.fold_in(key, i))
        values.update(_mean_sem(per_example, f'{name}/{metric}'))
    return values


def bound_line(values: dict, name: str, sizes, runs: int, k: int) -> str:
    """How `dbn_bounds`' values for the DBN of `sizes` are reported in the log."""
    line = (f'DBN {"-".join(map(str, sizes))}: top RBM AIS log Z {values["dbn/log_z"]:.2f} +- '
            f'{3 * values["dbn/log_z_spread"]:.2f} (3 std. errors, {runs} runs); {name} '
            f'variational bound {values[f"{name}/dbn_bound"]:.2f} +- '
            f'{values[f"{name}/dbn_bound_sem"]:.2f} nats')
    if k:
        line += (f', importance-sampled (k={k}) {values[f"{name}/dbn_is_log_likelihood"]:.2f} +- '
                 f'{values[f"{name}/dbn_is_log_likelihood_sem"]:.2f}')
    return line + ' (+- 1 std. error over examples)'


def filter_grid(w, image_shape, count: int = 100, columns: int = 10) -> np.ndarray:
    """w (V, H) -> a grid of the first `count` hidden units' weights as (H, W, C) tiles."""
    w = np.asarray(w, np.float32)
    if w.shape[0] != int(np.prod(image_shape)):
        raise ValueError(f'filters of {w.shape[0]} visible units cannot be {image_shape} images')
    tiles = w[:, :count].T
    scale = np.maximum(np.abs(tiles).max(axis=1, keepdims=True), 1e-12)
    tiles = np.round(127.5 + 127.5 * tiles / scale).astype(np.uint8)
    return image_grid(tiles.reshape(-1, *image_shape), columns)


def pixel_grid(pixels, image_shape, columns: int = 10) -> np.ndarray:
    """(N, V) floats in [0, 1] -> a grid of N images of `image_shape`."""
    pixels = np.clip(np.asarray(pixels, np.float32), 0.0, 1.0)
    images = np.round(255.0 * pixels).astype(np.uint8).reshape(-1, *image_shape)
    return image_grid(images, columns)


def chains_grid(snapshots, image_shape, chains: int = 10) -> np.ndarray:
    """(S, N, V) snapshots of N chains -> a grid with one row per chain (the first `chains`),
    its S snapshots left to right."""
    snapshots = np.asarray(snapshots)
    rows = np.swapaxes(snapshots[:, :chains], 0, 1).reshape(-1, snapshots.shape[-1])
    return pixel_grid(rows, image_shape, columns=snapshots.shape[0])


def dbn_pictures(layers, key, *, gibbs: int, image_shape, n: int = 100) -> dict:
    """{'samples': grid, 'chains': grid} of the DBN `layers`: n samples after `gibbs` sweeps of
    its top RBM and a pass down, and 10 of the chains at every tenth of the way; with one layer
    also {'filters': grid} of its first 100 units' weights."""
    samples, chains = jax.jit(lambda layers: dbn_lib.generate(
        layers, key, n=n, gibbs_steps=gibbs, snapshot_every=gibbs // 10))(layers)
    grids = {'samples': pixel_grid(samples, image_shape),
             'chains': chains_grid(chains, image_shape)}
    if len(layers) == 1:
        grids['filters'] = filter_grid(layers[0]['w'], image_shape)
    return grids


def write_pictures(out, layers, key, *, gibbs: int, image_shape, name: str = '') -> dict:
    """`dbn_pictures` of the DBN `layers` written through `out` (research.train.outputs):
    samples/NAME_{samples,chains}.png, NAME layer_L for L = len(layers) unless given, and
    filters.png for layer 1; returns the grids, for TensorBoard."""
    grids = dbn_pictures(layers, key, gibbs=gibbs, image_shape=image_shape)
    name = name or f'layer_{len(layers)}'
    return {k: out.png('filters.png' if k == 'filters' else f'samples/{name}_{k}.png', grid)
            for k, grid in grids.items()}


def likelihood_line(values: dict, name: str, sizes, runs: int, betas: int) -> str:
    """How `log_likelihoods`' values of an RBM of `sizes` (V, H) are reported in the log."""
    return (f'RBM 1 ({sizes[0]}-{sizes[1]}): AIS log Z {values["ais/log_z"]:.2f} +- '
            f'{3 * values["ais/log_z_spread"]:.2f} (3 std. errors, {runs} runs, {betas} betas); '
            f'log-likelihood {name} {values[f"{name}/log_likelihood"]:.2f} nats, train '
            f'{values["train/log_likelihood"]:.2f}')
