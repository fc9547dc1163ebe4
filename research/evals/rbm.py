"""What an RBM (or a DBN's layer) learned: its monitors, its log-likelihood by AIS, pictures.

  monitors         the mean free energy and pseudo-likelihood on training and evaluation
                   examples, and the free-energy gap between them: Hinton's practical guide
                   (2010, section 6) watches a held-out free energy drifting above the training
                   one as the sign of overfitting
  log_likelihoods  log Z by annealed importance sampling (research/evals/ais.py) from the base
                   rate of the training pixels, and the mean log p(v) it gives on each split
  dbn_pictures     samples of a DBN and snapshots of its chains (chains_grid: a row each)
  filter_grid      the weights of hidden units into the pixels, one image-shaped tile per unit:
                   mid grey is 0, white positive, black negative, each tile scaled to its own
                   largest |w| (so weak units show their shape too); strokes and blobs mean
                   the units learned local features, noise means they did not learn yet
  pixel_grid       pixel means in [0, 1] (samples, chain snapshots) as a grid
"""
import jax
import numpy as np

from research.evals import ais
from research.evals.evaluator import in_chunks
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


def log_likelihoods(params, key, *, betas: int, runs: int, train, evaluation,
                    name: str) -> dict:
    """AIS log Z (`runs` runs over `betas` inverse temperatures in Salakhutdinov & Murray's
    schedule, from the base-rate model of `train`'s pixel marginals), its spread, and the mean
    log-likelihood in nats with its standard error on `train` and on the `name` split (binary
    (N, V) arrays, in slices of 5,000 rows)."""
    schedule = ais.default_betas(betas)
    log_z, spread = jax.jit(lambda params, key, base: ais.ais_log_partition(
        params, key, betas=schedule, n_runs=runs, base_visible_bias=base))(
            params, key, rbm_lib.marginal_bias(train.mean(0)))
    values = {'ais/log_z': float(log_z), 'ais/log_z_spread': float(spread)}
    for split, v in (('train', train), (name, evaluation)):
        ll = in_chunks(lambda x: _log_likelihood(params, x, log_z), v, 5000)
        values[f'{split}/log_likelihood'] = float(ll.mean())
        values[f'{split}/log_likelihood_sem'] = float(ll.std() / np.sqrt(len(ll)))
    return values


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


def write_pictures(out, layers, key, *, gibbs: int, image_shape) -> dict:
    """`dbn_pictures` of the DBN `layers` written through `out` (research.train.outputs):
    samples/layer_L_{samples,chains}.png for L = len(layers), and filters.png for layer 1;
    returns the grids, for TensorBoard."""
    grids = dbn_pictures(layers, key, gibbs=gibbs, image_shape=image_shape)
    return {k: out.png('filters.png' if k == 'filters' else
                       f'samples/layer_{len(layers)}_{k}.png', grid) for k, grid in grids.items()}


def likelihood_line(values: dict, name: str, sizes, runs: int, betas: int) -> str:
    """How `log_likelihoods`' values of an RBM of `sizes` (V, H) are reported in the log."""
    return (f'RBM 1 ({sizes[0]}-{sizes[1]}): AIS log Z {values["ais/log_z"]:.2f} +- '
            f'{3 * values["ais/log_z_spread"]:.2f} (3 std. errors, {runs} runs, {betas} betas); '
            f'log-likelihood {name} {values[f"{name}/log_likelihood"]:.2f} nats, train '
            f'{values["train/log_likelihood"]:.2f}')
