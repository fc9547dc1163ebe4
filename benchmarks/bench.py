"""Speed of the experiments' jitted train steps on random data of the right shape: one JSON line.

    python -m benchmarks.bench dcgan --batch 128
    python -m benchmarks.bench mlpgan --batch 128 --repeats 7
    python -m benchmarks.bench vae --batch 128      # the MLP VAE (784-512-20, Bernoulli, ELBO)
    python -m benchmarks.bench rbm --batch 128      # one CD-1 step of a 784-500 Bernoulli RBM
    python -m benchmarks.bench charlstm --batch 64  # char LSTM: embed 64, hidden 256, 128 chars
    python -m benchmarks.bench transformer          # nanoGPT's baby GPT, batch 12, context 64

`examples_per_s` is the median over `--repeats` timings of `--steps` consecutive steps, after
compilation and `--warmup` untimed steps; `compile_s` is lowering plus XLA compilation. Each step
is built by the experiment's own `build(config)` from its preset, so it is the step that
experiment trains, not a copy that could drift: the GANs' (D then G update, Adam with injected
hyperparameters, the generator's EMA) from gan_mnist's default and mlp presets; the VAEs'
(dynamic binarization, ELBO with analytic KL) from vae_mnist's default and conv presets;
`charlstm` from char_lm's lstm preset with one layer (AdamW, clipping, the lr schedule), on
(B, 129) random character ids of 65 symbols; `transformer` from char_lm's default preset
(--batch defaults to nanoGPT's 12); both in a process with char_lm's one malloc arena
(research/host_memory.py). `rbm` is dbn_mnist's CD step with its momentum and weight
decay on a fixed random binary batch, non-persistent (CD-1) as in the PyTorch reference.
`flops_per_step` counts the step's matmul and convolution FLOPs from its jaxpr
(research.train.flops), `flops_per_s` is that times the step rate, and `mfu` the model FLOP
utilisation where the device's peak is known (None on a CPU).
`--kernels plain` times the plain Flax layers instead of the fast ones (research/models/fast);
`--precision bf16` the step as `--config.train.precision=bf16` trains it (research/train/precision:
bfloat16 operands in every matmul and convolution; on a CPU only emulated, and slower).
PyTorch eager references of the same networks: `benchmarks/torch_reference.py`.
"""
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import char_lm, dbn_mnist, gan_mnist, vae_mnist
from research import errors, host_memory
from research.models.rbm import init_rbm
from research.objectives.rbm import init_rbm_state, make_cd_step
from research.train import flops as flops_lib
from research.train import precision as precision_lib

IMAGE_SHAPE = (28, 28, 1)
VOCAB = 65  # tiny shakespeare's


def images(batch: int) -> dict:
    pixels = np.random.default_rng(0).integers(0, 256, (batch, *IMAGE_SHAPE), dtype=np.uint8)
    return {'image': jnp.asarray(pixels)}


def gan_setup(preset: str, batch: int, kernels: str):
    config = gan_mnist.get_config(preset)
    config.model.kernels = kernels
    _, init, step = gan_mnist.build(config, IMAGE_SHAPE)
    return jax.jit(init)(jax.random.PRNGKey(0)), step, images(batch)


def vae_setup(preset: str, batch: int, kernels: str):
    config = vae_mnist.get_config(preset)
    config.model.kernels = kernels
    _, init, step = vae_mnist.build(config, IMAGE_SHAPE)
    return jax.jit(init)(jax.random.PRNGKey(0)), step, images(batch)


def lm_setup(preset: str, batch: int, kernels: str, **model):
    config = char_lm.get_config(preset)
    config.model.update(kernels=kernels, **model)
    _, init, step = char_lm.build(config, VOCAB)
    tokens = np.random.default_rng(0).integers(0, VOCAB, (batch, config.data.seq_len + 1),
                                               dtype=np.int32)
    return jax.jit(init)(jax.random.PRNGKey(0)), step, {'tokens': jnp.asarray(tokens)}


def rbm_setup(batch: int, kernels: str, visible: int = 784, hidden: int = 500):
    del kernels  # an RBM step is three products: nothing to choose
    r = dbn_mnist.get_config().rbm
    params = init_rbm(jax.random.PRNGKey(0), visible, hidden)
    state = init_rbm_state(jax.random.PRNGKey(1), params, n_chains=batch)
    step = make_cd_step(k=r.k, persistent=False, lr=0.1, momentum=r.momentum,
                        weight_decay=r.weight_decay)
    v = np.random.default_rng(0).integers(0, 2, (batch, visible)).astype(np.float32)
    return state, step, {'v': jnp.asarray(v)}


LM_PRESETS = {'charlstm': 'lstm', 'transformer': 'default'}  # char_lm's
MODELS = {'dcgan': lambda b, k: gan_setup('default', b, k),
          'mlpgan': lambda b, k: gan_setup('mlp', b, k),
          'vae': lambda b, k: vae_setup('default', b, k),
          'convvae': lambda b, k: vae_setup('conv', b, k),
          'rbm': rbm_setup,
          'charlstm': lambda b, k: lm_setup(LM_PRESETS['charlstm'], b, k, layers=1),
          'transformer': lambda b, k: lm_setup(LM_PRESETS['transformer'], b, k)}
DEFAULT_BATCH = {'transformer': 12}  # nanoGPT's baby-GPT recipe


def compiler_options(model: str) -> dict:
    """The XLA options the experiment compiles `model`'s train step with (char_lm's)."""
    if model not in LM_PRESETS:
        return {}
    return char_lm.compiler_options(char_lm.get_config(LM_PRESETS[model]))


def measure(model: str, batch: int, steps: int, repeats: int, warmup: int,
            kernels: str = 'auto', precision: str = 'f32') -> dict:
    state, step, data = MODELS[model](batch, kernels)
    step = precision_lib.apply(step, precision)
    t0 = time.perf_counter()
    options = compiler_options(model)
    traced = jax.jit(step, donate_argnums=0, compiler_options=options or None).trace(state, data)
    compiled = traced.lower().compile()
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
    counted = flops_lib.jaxpr_flops(traced.jaxpr)
    device = jax.devices()[0].device_kind
    mfu = flops_lib.utilisation(counted.flops * rate, device)
    return {'framework': 'jax', 'jax_version': jax.__version__, 'model': model, 'batch': batch,
            'kernels': kernels, 'precision': precision, 'compiler_options': options,
            'steps_per_s': round(rate, 3),
            'examples_per_s': round(rate * batch, 1), 'compile_s': round(compile_s, 2),
            'repeats': repeats, 'steps': steps, 'backend': jax.default_backend(),
            'device': device, 'flops_per_step': counted.flops,
            'flops_per_s': round(counted.flops * rate),
            'mfu': None if mfu is None else round(mfu, 5)}


def main(argv=None):
    parser = errors.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('model', choices=sorted(MODELS))
    parser.add_argument('--batch', type=errors.positive_int, default=None,
                        help='default 128 (12 for transformer)')
    parser.add_argument('--steps', type=errors.positive_int, default=20,
                        help='steps per timed repetition')
    parser.add_argument('--repeats', type=errors.positive_int, default=5)
    parser.add_argument('--warmup', type=errors.positive_int, default=3)
    parser.add_argument('--kernels', default='auto', choices=('auto', 'fast', 'plain'),
                        help="the models' layers (research/models/fast)")
    parser.add_argument('--precision', default='f32', choices=precision_lib.PRECISIONS,
                        help='matmul and convolution inputs (research/train/precision)')
    args = parser.parse_args(argv)
    if args.batch is None:
        args.batch = DEFAULT_BATCH.get(args.model, 128)
    if args.model in LM_PRESETS:  # as char_lm runs, before JAX starts its backend
        host_memory.one_arena()
    with errors.reported():
        result = measure(args.model, args.batch, args.steps, args.repeats, args.warmup,
                         args.kernels, args.precision)
    print(json.dumps(result), flush=True)


if __name__ == '__main__':
    main()
