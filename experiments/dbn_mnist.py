r"""Deep belief network on MNIST or Fashion-MNIST: greedy RBM layers, samples, AIS, fine-tuning.

    python -m experiments.dbn_mnist                                  # default, below
    python -m experiments.dbn_mnist --config.data.name=fashion_mnist # full Fashion-MNIST
    python -m experiments.dbn_mnist --config.finetune.init=random    # the MLP alone, no DBN
    python -m experiments.dbn_mnist --config=experiments/dbn_mnist.py:updown  # + up-down
    python -m experiments.dbn_mnist --config.scores.n=10000  # + the judge's scores of samples

Default: a 784-500-500-2000 DBN (Hinton, Osindero & Teh 2006): RBM layers trained greedily by
PCD-1, the whole DBN's variational bound on log p(v) at each depth (and its importance-sampled
estimate), then a sigmoid MLP from their weights, fine-tuned by backprop. The updown preset
first fine-tunes the DBN as a generative model by up-down (research/objectives/updown.py) and
reports its bound and the pinned judge's scores of its samples before and after. Writes
results.json, filters.png, samples/ and a directory per phase (rbm_1..L, updown, finetune);
rerunning resumes. The README's results table has each preset's measured time and numbers,
the recipe, the published references and the config meant to approach them on full MNIST.
"""
import jax
import ml_collections
import numpy as np

from research import data
from research.evals import ais, rbm as rbm_eval
from research.evals.judge import check_judge
from research.evals.score_samples import score_metrics
from research.evals.classification import (accuracy_hook, classification_metrics,
                                           make_classifier_evaluator)
from research.evals.evaluator import in_chunks
from research.models import dbn as dbn_lib
from research.models.classifier import make_classifier
from research.objectives.classifier import make_classifier_step
from research.objectives.dbn import init_finetune_state, init_layer_state, make_layer_step, pixels
from research.objectives.optim import adamw, check_warmup
from research.objectives.rbm import learning_rate
from research.objectives.updown import generative_layers, init_updown_state, make_updown_step
from research.train import cli, loop, transfer
from research.train.outputs import Outputs, save_config

PRESETS = ('default', 'updown', 'smoke')


def get_config(preset: str = 'default') -> ml_collections.ConfigDict:
    cli.check_preset('dbn_mnist', preset, PRESETS)
    c = ml_collections.ConfigDict()
    c.preset, c.seed = preset, 0
    c.data = dict(name='mnist', train_split='train', train_dir='', test_split='test',
                  test_dir='', heldout=1000, validation=0, binarize_seed=0, source='auto')
    c.dbn = dict(hidden=(500, 500, 2000))
    c.rbm = dict(k=1, persistent=True, lr=0.02, lr_decay='linear', momentum=0.5,
                 weight_decay=2e-4, batch_size=128, steps=3000, gibbs=1000, monitor_examples=1000)
    c.ais = dict(runs=100, betas=14_501)  # runs=0: no likelihood and no bound
    c.bound = dict(samples=10, k=100)  # the DBN's bound at every depth; k=0: no IS estimate
    c.finetune = dict(init='dbn', lr=1e-3, weight_decay=0.0, warmup_steps=100, batch_size=128,
                      steps=2000, generative='none')  # generative='updown': up-down first
    # Up-down fine-tuning of the whole DBN as a generative model, before the MLP's backprop
    c.updown = dict(k=3, lr=0.005, lr_decay='linear', momentum=0.5, weight_decay=2e-4,
                    batch_size=128, steps=3000)
    # The pinned judge on n samples (each after `gibbs` sweeps of the top RBM): of the greedy
    # DBN at the end of its top layer (samples.npz); with updown, of the greedy DBN and the
    # up-down one (samples_greedy.npz, samples.npz). n=0: no scores (the default's 2 minutes)
    c.scores = dict(n=0, gibbs=200)
    c.train = dict(log_every=250, checkpoint_every=1000, eval_every=1000)  # of every phase
    c.eval = dict(batch_size=512)  # a multiple of 1, 2, 4, 8... devices
    if preset in ('updown', 'smoke'):
        c.finetune.generative = 'updown'
        c.scores.n = 10_000
    if preset == 'smoke':  # seconds: for tests
        c.dbn.hidden = (32, 16)
        c.rbm.update(batch_size=16, steps=4, gibbs=20, monitor_examples=50)
        c.ais.update(runs=8, betas=200)
        c.bound.update(samples=2, k=4)
        c.finetune.update(batch_size=16, steps=4, warmup_steps=1)
        c.updown.update(k=2, batch_size=16, steps=4)
        c.scores.update(n=40, gibbs=10)
        c.train.update(log_every=2, checkpoint_every=2, eval_every=2)
        c.data.heldout, c.eval.batch_size = 200, 64
    return cli.run_options(c)


def check_config(c: ml_collections.ConfigDict) -> None:
    """Rejects bad choices before anything is loaded, built or written."""
    if c.data.name not in ('mnist', 'fashion_mnist'):  # 28x28 grey levels: binary units fit
        raise ValueError(f'dbn_mnist trains binary RBMs on 28x28 grey images: data.name must be '
                         f'one of mnist, fashion_mnist, got {c.data.name!r}')
    if not c.dbn.hidden or min(c.dbn.hidden) < 1:
        raise ValueError(f'dbn.hidden must list >= 1 positive layer sizes, got {c.dbn.hidden}')
    if c.finetune.init not in ('dbn', 'random'):
        raise ValueError(f"finetune.init must be 'dbn' or 'random', got {c.finetune.init!r}")
    if c.finetune.generative not in ('none', 'updown'):
        raise ValueError(f"finetune.generative must be 'none' or 'updown', got "
                         f"{c.finetune.generative!r}")
    if c.finetune.generative == 'updown':
        if c.finetune.init != 'dbn' or len(c.dbn.hidden) < 2:
            raise ValueError('finetune.generative=updown fine-tunes a DBN of >= 2 layers: it '
                             f'needs finetune.init=dbn and 2 or more dbn.hidden, got '
                             f'{c.finetune.init!r} and {tuple(c.dbn.hidden)}')
        make_updown_step(k=c.updown.k, lr=c.updown.lr, momentum=c.updown.momentum,
                         weight_decay=c.updown.weight_decay)  # bad values raise
        learning_rate(c.updown.lr, c.updown.lr_decay, c.updown.steps)
    if c.scores.n and c.finetune.init == 'dbn':
        check_judge(c.data.name, '--config.scores.n=0')
    if c.rbm.gibbs % 10:
        raise ValueError(f'rbm.gibbs must be a multiple of 10 (the chains picture shows ten '
                         f'snapshots), got {c.rbm.gibbs}')
    if c.bound.samples < 1 or c.bound.k < 0:
        raise ValueError(f'bound.samples must be >= 1 and bound.k >= 0, got samples='
                         f'{c.bound.samples}, k={c.bound.k}')
    learning_rate(c.rbm.lr, c.rbm.lr_decay, c.rbm.steps)  # an unknown decay raises
    check_warmup(c.finetune.warmup_steps, c.finetune.steps, 'finetune.warmup_steps',
                 'finetune.steps')
    if c.ais.runs:
        ais.default_betas(c.ais.betas)  # fewer than 4 raises
    phases = [f'rbm_{l + 1}' for l in range(len(c.dbn.hidden))] + ['updown', 'finetune']
    if c.init_from and not any(transfer.phase(c.init_from, p) for p in phases):
        raise ValueError(f'init_from={c.init_from!r} has none of this run\'s phases '
                         f'({", ".join(phases)}) to start them from: is it a dbn_mnist run?')


def run(config: ml_collections.ConfigDict, workdir: str):
    check_config(config)
    d, r, f, out = config.data, config.rbm, config.finetune, Outputs(workdir)
    train, test, name = data.load_splits(config.data, config.seed)
    save_config(config, workdir)
    shape = train.images.shape[1:]
    # Fixed binarizations (from a seed) for the likelihood and the monitors; training draws anew.
    train_bin, test_bin = (pixels(data.binarize(split.images, [d.binarize_seed, i]))
                           for i, split in enumerate((train, test)))
    sizes, layers = (int(np.prod(shape)), *config.dbn.hidden), []
    results = {**data.describe(train, test, name), 'layers': []}
    shown = [x[np.random.default_rng(config.seed).choice(  # seeded: a split may be in class order
        len(x), min(r.monitor_examples, len(x)), replace=False)] for x in (train_bin, test_bin)]
    for l in range(len(sizes) - 1 if f.init == 'dbn' else 0):  # 'random': the MLP alone
        lower, layer = list(layers), {'layer': l + 1, 'visible': sizes[l], 'hidden': sizes[l + 1]}
        up = jax.jit(lambda v: dbn_lib.up_pass(lower, v) if lower else v)
        seen, marginals = [up(x) for x in shown], in_chunks(up, train_bin, 5000).mean(axis=0)
        monitor = lambda step, state, out: rbm_eval.monitors(state.params, *seen, name,
                                                             jax.random.PRNGKey(step))

        def final(step, state, out):
            logged = rbm_eval.write_pictures(out, [*lower, state.params], jax.random.PRNGKey(
                config.seed + 100 + l), gibbs=r.gibbs, image_shape=shape)
            if l == len(sizes) - 2 and f.generative != 'updown':  # the whole DBN's samples
                logged.update(sample_scores(config, [*lower, state.params], jax.random.PRNGKey(
                    config.seed + 303), shape, out, 'samples.npz'))
            layer.update(monitor(step, state, out))
            if not config.ais.runs:
                return {**logged, **{k: v for k, v in layer.items() if '/' in k}}
            if l == 0:
                layer.update(rbm_eval.log_likelihoods(state.params, jax.random.PRNGKey(
                    config.seed + 1), **config.ais, train=train_bin, evaluation=test_bin,
                    name=name))
                out.print(rbm_eval.likelihood_line(layer, name, sizes, **config.ais))
                log_z = {'log_z': layer['ais/log_z'], 'log_z_spread': layer['ais/log_z_spread']}
            else:  # the top RBM's, from the base rate of what it was trained on
                log_z = rbm_eval.log_partition(state.params, jax.random.PRNGKey(
                    config.seed + 1 + l), **config.ais, marginals=marginals)
            layer.update(rbm_eval.dbn_bounds(
                [*lower, state.params], jax.random.PRNGKey(config.seed + 200 + l), log_z,
                evaluation=test_bin, name=name, **config.bound, batch_size=config.eval.batch_size))
            out.print(rbm_eval.bound_line(layer, name, sizes[:l + 2], config.ais.runs,
                                          config.bound.k))
            return {**logged, **{k: v for k, v in layer.items() if '/' in k}}

        out.print(f'layer {l + 1}/{len(sizes) - 1}: RBM {sizes[l]}-{sizes[l + 1]}, '
                  f'{"PCD" if r.persistent else "CD"}-{r.k}, {r.steps} steps of {r.batch_size}')
        state = loop.train(
            {**config.train, 'steps': r.steps}, workdir=out.path(f'rbm_{l + 1}'),
            seed=config.seed, init_args=(marginals,), init=lambda key, marginals: init_layer_state(
                key, l, sizes, marginals, n_chains=r.batch_size),
            step=make_layer_step(lower, binarize=True, k=r.k, persistent=r.persistent,
                                 lr=learning_rate(r.lr, r.lr_decay, r.steps),
                                 momentum=r.momentum, weight_decay=r.weight_decay),
            pipeline=data.BatchPipeline({'image': train.images}, r.batch_size, config.seed + l),
            hooks=data.periodic(name, [loop.Every(config.train.eval_every, monitor)]),
            final=[final], outputs=out, **loop.options(config, f'rbm_{l + 1}'))
        layers.append(jax.device_get(state.params))
        results['layers'].append(layer)

    if f.generative == 'updown':
        results['updown'] = updown(config, layers, results['layers'][-1], train, train_bin,
                                   test_bin, name, out)

    model = make_classifier('mlp', hidden=config.dbn.hidden, activation='sigmoid')
    tx = adamw(f.lr, f.steps, warmup_steps=f.warmup_steps, weight_decay=f.weight_decay)
    predict = make_classifier_evaluator(model, config.eval.batch_size)

    def report(step, state, out):
        s = classification_metrics(test.labels, predict(state.params, test.images), 10)
        results['finetune'] = dict(accuracy=s['accuracy'], macro_f1=s['macro_f1'],
                                   error=1 - s['accuracy'], init=f.init, step=step)
        out.print(f'final ({name}, {len(test.labels)} examples): fine-tuned accuracy '
                  f'{s["accuracy"]:.4f} (error {100 * (1 - s["accuracy"]):.2f}%), macro F1 '
                  f'{s["macro_f1"]:.4f}')
        return {f'{name}/accuracy': s['accuracy']}

    out.print(f'fine-tuning: sigmoid MLP {"-".join(map(str, (*sizes, 10)))} from '
              f'{"the DBN" if layers else "a random init"}, {f.steps} steps')
    loop.train({**config.train, 'steps': f.steps}, workdir=out.path('finetune'),
               seed=config.seed + 2, step=make_classifier_step(model, tx), init_args=(layers,),
               **loop.options(config, 'finetune'),
               init=lambda key, layers: init_finetune_state(key, model, tx, shape, layers),
               pipeline=data.BatchPipeline({'image': train.images, 'label': train.labels},
                                           f.batch_size, config.seed), final=[report], outputs=out,
               hooks=data.periodic(name, [loop.Every(config.train.eval_every,
                                                     accuracy_hook(predict, test, name))]))
    out.json('results.json', results)
    out.print(f'done: results.json, pictures and a directory per phase in {out.path()}')


def sample_scores(config, layers, key, shape, out, file: str) -> dict:
    """The pinned judge's scores of `config.scores.n` samples of the DBN `layers` (each after
    `config.scores.gibbs` sweeps of its top RBM from the base rate, then a pass down), whose
    uint8 images go to `file`; {} when scores.n is 0."""
    if not config.scores.n:
        return {}
    means = jax.jit(lambda layers: dbn_lib.generate(
        layers, key, n=config.scores.n, gibbs_steps=config.scores.gibbs)[0])(layers)
    images = np.round(255.0 * np.clip(np.asarray(means), 0.0, 1.0)).astype(np.uint8)
    images = images.reshape(-1, *shape)
    out.npz(file, images=images)
    return score_metrics(images, config.data.name, reference_split=config.data.train_split,
                         data_dir=config.data.train_dir or None)


def updown(config, layers, greedy, train, train_bin, test_bin, name, out) -> dict:
    """Up-down fine-tuning of the greedy stack `layers` (research/objectives/updown.py), in its
    own phase directory; returns the bound and the samples' scores before (`greedy`: the top
    layer's results) and after."""
    u, shape = config.updown, train.images.shape[1:]
    report = {}

    def final(step, state, out):
        before = {k: v for k, v in greedy.items() if k.startswith(('dbn/', f'{name}/dbn_'))}
        before.update(sample_scores(config, layers, jax.random.PRNGKey(config.seed + 303),
                                    shape, out, 'samples_greedy.npz'))
        gen, rec = generative_layers(state.params), state.params['recognition']
        logged = rbm_eval.write_pictures(out, gen, jax.random.PRNGKey(config.seed + 300),
                                         gibbs=config.rbm.gibbs, image_shape=shape,
                                         name='updown')
        after = {}
        if config.ais.runs:
            up = jax.jit(lambda v: dbn_lib.up_pass(rec, v))  # mean field, recognition weights
            log_z = rbm_eval.log_partition(gen[-1], jax.random.PRNGKey(config.seed + 301),
                                           **config.ais, marginals=in_chunks(
                                               up, train_bin, 5000).mean(axis=0))
            after = rbm_eval.dbn_bounds(gen, jax.random.PRNGKey(config.seed + 302), log_z,
                                        evaluation=test_bin, name=name, **config.bound,
                                        batch_size=config.eval.batch_size, recognition=rec)
            out.print('after up-down: ' + rbm_eval.bound_line(
                after, name, [l['w'].shape[0] for l in gen] + [gen[-1]['w'].shape[1]],
                config.ais.runs, config.bound.k))
        after.update(sample_scores(config, gen, jax.random.PRNGKey(config.seed + 303), shape,
                                   out, 'samples.npz'))
        for when, values in (('before', before), ('after', after)):
            if 'scores/fid' in values:
                out.print(f'{when} up-down, {config.scores.n} samples ({config.scores.gibbs} '
                          f'sweeps): FID {values["scores/fid"]:.1f}, KID {values["scores/kid"]:.4f}'
                          f', classifier score {values["scores/classifier_score"]:.2f}')
        report.update(before=before, after=after, step=step)
        return {**logged, **{f'updown/{k}': v for k, v in after.items()}}

    out.print(f'up-down fine-tuning: CD-{u.k} in the top RBM, {u.steps} steps of '
              f'{u.batch_size}')
    loop.train({**config.train, 'steps': u.steps}, workdir=out.path('updown'),
               seed=config.seed + 3, init_args=(layers,), init=init_updown_state,
               step=make_updown_step(k=u.k, lr=learning_rate(u.lr, u.lr_decay, u.steps),
                                     momentum=u.momentum, weight_decay=u.weight_decay),
               pipeline=data.BatchPipeline({'image': train.images}, u.batch_size,
                                           config.seed + 3),
               final=[final], outputs=out, **loop.options(config, 'updown'))
    return report


if __name__ == '__main__':  # flags only when run, not when loaded as a config file
    cli.main(__file__, 'dbn_mnist', run, check_config)
