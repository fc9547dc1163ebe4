"""Fused steps: K steps per dispatch from a dataset kept on the device give exactly the states
and metrics of K single steps, on 1 and 8 devices, through the loop's logging, checkpoints and
resumption, for the GAN's and the VAE's image batches and for text windows (with and without
YNNPACK); intervals that K does not divide are refused."""
import json

import jax
import numpy as np
import pytest

from conftest import build_gan, random_images
from experiments import char_lm, vae_mnist
from research.data import BatchPipeline, WindowPipeline
from research.train import loop, mesh as mesh_lib

GAN = build_gan('mlp', ema_decay=0.9)


def run(tmp_path, name, k, devices, num_steps=8, log_every=4, init=lambda key: GAN.state,
        step=GAN.step):
    pipeline = BatchPipeline({'image': random_images(64)}, 16, seed=3)
    schedule = dict(steps=num_steps, log_every=log_every, checkpoint_every=4,
                    steps_per_dispatch=k)
    final = loop.train(schedule, workdir=str(tmp_path / name), init=init,
                       step=step, pipeline=pipeline, mesh=mesh_lib.data_mesh(devices))
    records = [json.loads(line) for line in (tmp_path / name / 'metrics.jsonl').open()]
    for record in records:  # the measured rates and times differ from run to run
        for key in ('examples_per_s', 'flops_per_s', 'time'):
            record.pop(key)
    return jax.device_get(final), records


@pytest.mark.parametrize('devices', [1, 8])
def test_fused_steps_equal_single_steps(tmp_path, devices):
    devices = jax.devices()[:devices]
    single, single_records = run(tmp_path, 'single', 1, devices)
    fused, fused_records = run(tmp_path, 'fused', 4, devices)
    jax.tree.map(np.testing.assert_array_equal, fused, single)
    assert fused_records == single_records  # window means of the same per-step losses


@pytest.mark.parametrize('arch, devices', [('mlp', 1), ('mlp', 8), ('conv', 1)])
def test_fused_vae_steps_equal_single_steps(tmp_path, arch, devices):
    # The VAE's step draws a fresh binarization and z from (rng, step) inside the scan.
    config = vae_mnist.get_config('smoke')
    config.model.update(arch=arch, hidden=(32,), latent=4)
    _, init, step = vae_mnist.build(config, (28, 28, 1))
    devices = jax.devices()[:devices]
    single, single_records = run(tmp_path, 'single', 1, devices, init=init, step=step)
    fused, fused_records = run(tmp_path, 'fused', 4, devices, init=init, step=step)
    assert int(fused.step) == 8 and len(fused_records) == 2
    if arch == 'mlp':
        jax.tree.map(np.testing.assert_array_equal, fused, single)
        assert fused_records == single_records
        return
    # XLA:CPU compiles the convolutions inside the scan differently: the same maths with other
    # last bits. Measured after 8 steps: Adam's moments within 1e-6 of each leaf's largest
    # entry; Adam divides tiny gradients by their own size, so 8 of the 1.3e5 weights moved
    # apart by up to 7.7e-6 (the learning rate is 1e-3). A wrong key or batch moves the
    # logged ELBO itself.
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(fused)[0],
                            jax.tree.leaves(single)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert np.max(np.abs(a - b), initial=0) <= 1e-5 * np.max(np.abs(b), initial=0) + 5e-5, \
            jax.tree_util.keystr(path)
    for a, b in zip(fused_records, single_records):
        assert a.keys() == b.keys() and a['step'] == b['step']
        np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], rtol=1e-6)


def test_fused_run_resumes_and_reuses_single_step_checkpoints(tmp_path):
    devices = jax.devices()[:1]
    straight, _ = run(tmp_path, 'straight', 1, devices)
    run(tmp_path, 'resumed', 1, devices, num_steps=4)  # a single-step run stopped at step 4,
    resumed, _ = run(tmp_path, 'resumed', 2, devices)  # finished two steps per dispatch
    jax.tree.map(np.testing.assert_array_equal, resumed, straight)


def test_intervals_must_be_multiples_of_k(tmp_path):
    with pytest.raises(ValueError, match='log_every=6 is not a multiple of steps_per_dispatch=4'):
        run(tmp_path, 'bad', 4, jax.devices()[:1], log_every=6)
    run(tmp_path, 'three', 1, jax.devices()[:1], num_steps=3, log_every=1)
    with pytest.raises(ValueError, match='is at step 3, not a multiple of steps_per_dispatch=2'):
        run(tmp_path, 'three', 2, jax.devices()[:1])


def test_fused_steps_on_text_windows_equal_single_steps(tmp_path):
    # WindowPipeline honours the indexed protocol too: a window's token positions are its rows.
    config = char_lm.get_config('smoke')
    _, init, step = char_lm.build(config, 11)
    tokens = np.random.default_rng(0).integers(0, 11, 400).astype(np.int32)
    pipeline = WindowPipeline(tokens, config.data.seq_len, 8, seed=1)
    run = lambda k, devices, options=None: jax.device_get(loop.train(
        dict(steps=4, log_every=2, checkpoint_every=4, steps_per_dispatch=k),
        workdir=str(tmp_path / f'{k}_{devices}_{bool(options)}'), init=init, step=step,
        pipeline=pipeline, mesh=mesh_lib.data_mesh(jax.devices()[:devices]),
        compiler_options=options))
    single, fused = run(1, 1), run(2, 1)
    jax.tree.map(np.testing.assert_array_equal, fused, single)  # one device: bit for bit
    assert int(fused.step) == 4
    # On two devices the step is partitioned differently inside the scan than alone, and
    # without YNNPACK (as char_lm compiles its Transformer on an AVX2 x86 CPU) XLA fuses the
    # reductions differently inside the scan: the same maths, summed in another order. The
    # attention's key bias has an exactly zero gradient (softmax ignores a shift shared by all
    # keys), which Adam turns from rounding noise into steps the size of the learning rate
    # (4e-5 apart here); everything else agrees to 1e-5 (2e-6 seen).
    off = {'xla_cpu_experimental_ynn_fusion_type': ''}
    for fused, single in ((run(2, 2), run(1, 2)), (run(2, 1, off), run(1, 1, off))):
        for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(fused)[0],
                                jax.tree.leaves(single)):
            noise = "['qkv']['bias']" in jax.tree_util.keystr(path)
            np.testing.assert_allclose(a, b, rtol=0 if noise else 1e-5,
                                       atol=2e-4 if noise else 1e-7,
                                       err_msg=jax.tree_util.keystr(path))
