"""Speed of jitted train steps on random data of the right shape: one JSON line per run.

    python -m benchmarks.bench dcgan --batch 128
    python -m benchmarks.bench mlpgan --batch 128 --repeats 7
    python -m benchmarks.bench vae --batch 128      # the MLP VAE (784-512-20, Bernoulli, ELBO)
    python -m benchmarks.bench rbm --batch 128      # one CD-1 step of a 784-500 Bernoulli RBM
    python -m benchmarks.bench charlstm --batch 64  # char LSTM: embed 64, hidden 256, 128 chars
    python -m benchmarks.bench transformer          # nanoGPT's baby GPT, batch 12, context 64

`examples_per_s` is the median over `--repeats` timings of `--steps` consecutive steps, after
compilation and `--warmup` untimed steps; `compile_s` is lowering plus XLA compilation. The step
is the one the experiments run: for GANs D then G update, Adam, non-saturating loss; for VAEs
dynamic binarization, ELBO with analytic KL, Adam; the batch travels as uint8; for the RBM one
CD-1 step (sampled visible units, lr 0.1, momentum 0.5, weight decay 2e-4) on a fixed random
binary float32 batch; for `charlstm` one Adam step of embedding(65, 64) -> LSTM(256) ->
Dense(65) on (B, 129) random character ids (an example is a 128-character window); for
`transformer` one AdamW step of nanoGPT's baby GPT (4 layers, 4 heads, width 128, context 64,
dropout 0; --batch defaults to its 12).
PyTorch eager references of the same networks: `benchmarks/torch_reference.py`.
"""
import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.models.gan import make_gan
from research.models.rbm import init_rbm
from research.models.sequence import CharRNN
from research.models.transformer import Transformer
from research.models.vae import make_vae
from research.objectives.gan import LOSSES, init_gan_state, make_gan_step
from research.objectives.lm import init_lm_state, make_lm_step
from research.objectives.optim import adamw
from research.objectives.rbm import init_rbm_state, make_cd_step
from research.objectives.vae import init_vae_state, make_vae_step

Z_DIM = 100


def gan_parts(arch: str):
    """(init(key) -> state, step) of the GAN the experiments train."""
    generator, discriminator = make_gan(arch)
    tx = optax.adam(2e-4, b1=0.5, b2=0.999)
    init = lambda key: init_gan_state(key, generator, discriminator, tx, tx, Z_DIM, (28, 28, 1))
    return init, make_gan_step(generator, discriminator, tx, tx, loss=LOSSES['non_saturating'],
                               z_dim=Z_DIM)


def vae_parts(arch: str, latent: int = 20):
    """(init(key) -> state, step) of the VAE the experiments train."""
    vae = make_vae(arch, latent=latent, channels=1)
    tx = optax.adam(1e-3)
    return (lambda key: init_vae_state(key, vae, tx, (28, 28, 1), latent),
            make_vae_step(vae, tx, likelihood='bernoulli'))


def gan_setup(arch: str, batch: int):
    init, step = gan_parts(arch)
    return init(jax.random.PRNGKey(0)), step, random_batch(batch)


def vae_setup(arch: str, batch: int):
    init, step = vae_parts(arch)
    return init(jax.random.PRNGKey(0)), step, random_batch(batch)


def rbm_setup(batch: int, visible: int = 784, hidden: int = 500):
    params = init_rbm(jax.random.PRNGKey(0), visible, hidden)
    state = init_rbm_state(jax.random.PRNGKey(1), params, n_chains=batch)
    step = make_cd_step(k=1, persistent=False, lr=0.1, momentum=0.5, weight_decay=2e-4,
                        visible='bernoulli')
    v = np.random.default_rng(0).integers(0, 2, (batch, visible)).astype(np.float32)
    return state, step, {'v': jnp.asarray(v)}


def lm_setup(model, tx, batch: int, seq_len: int, vocab: int = 65):
    state = init_lm_state(jax.random.PRNGKey(0), model, tx, seq_len)
    tokens = np.random.default_rng(0).integers(0, vocab, (batch, seq_len + 1), dtype=np.int32)
    return state, make_lm_step(model, tx), {'tokens': jnp.asarray(tokens)}


def charlstm_setup(batch: int):
    return lm_setup(CharRNN(65, 'lstm', embed=64, hidden=256, layers=1), optax.adam(2e-3),
                    batch, 128)


def transformer_setup(batch: int):
    model = Transformer(65, layers=4, heads=4, width=128, context=64, dropout=0.0)
    return lm_setup(model, adamw(1e-3, 5000, warmup_steps=100, final_lr=1e-4, b2=0.99,
                                   decay='matrices', clip=1.0), batch, 64)


def random_batch(batch: int) -> dict:
    images = np.random.default_rng(0).integers(0, 256, (batch, 28, 28, 1), dtype=np.uint8)
    return {'image': jnp.asarray(images)}


MODELS = {'dcgan': lambda b: gan_setup('dcgan', b), 'mlpgan': lambda b: gan_setup('mlp', b),
          'vae': lambda b: vae_setup('mlp', b), 'convvae': lambda b: vae_setup('conv', b),
          'rbm': rbm_setup, 'charlstm': charlstm_setup, 'transformer': transformer_setup}
DEFAULT_BATCH = {'transformer': 12}  # nanoGPT's baby-GPT recipe


def measure(model: str, batch: int, steps: int, repeats: int, warmup: int) -> dict:
    state, step, data = MODELS[model](batch)
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state, data).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        state, metrics = compiled(state, data)
    jax.block_until_ready(state)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            state, metrics = compiled(state, data)
        jax.block_until_ready((state, metrics))
        rates.append(steps / (time.perf_counter() - t0))
    rate = statistics.median(rates)
    return {'framework': 'jax', 'jax_version': jax.__version__, 'model': model, 'batch': batch,
            'steps_per_s': round(rate, 3), 'examples_per_s': round(rate * batch, 1),
            'compile_s': round(compile_s, 2), 'repeats': repeats, 'steps': steps,
            'backend': jax.default_backend(), 'device': jax.devices()[0].device_kind}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('model', choices=sorted(MODELS))
    parser.add_argument('--batch', type=int, default=None,
                        help='default 128 (12 for transformer)')
    parser.add_argument('--steps', type=int, default=20, help='steps per timed repetition')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=3)
    args = parser.parse_args(argv)
    if args.batch is None:
        args.batch = DEFAULT_BATCH.get(args.model, 128)
    print(json.dumps(measure(args.model, args.batch, args.steps, args.repeats, args.warmup)),
          flush=True)


if __name__ == '__main__':
    main()
