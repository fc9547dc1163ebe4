"""GAN networks, losses on hand-checked values, and the pure train step."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import IMAGE_SHAPE, Z_DIM, build_gan, random_images
from research.models.gan import (DCGANDiscriminator, DCGANGenerator, MLPDiscriminator,
                                 MLPGenerator, make_gan)
from research.objectives.gan import (LOSSES, PENALTIES, gradient_penalty, lookup,
                                     make_gan_step, make_sampler, make_standing_stats,
                                     r1_penalty)

# Networks.


@pytest.mark.parametrize('generator, discriminator', [
    (DCGANGenerator(), DCGANDiscriminator()),
    (MLPGenerator(), MLPDiscriminator()),
], ids=['dcgan', 'mlp'])
def test_network_shapes(generator, discriminator):
    # Batch 3: init sees batch 2, so a batch size baked in anywhere shows up.
    z = np.random.default_rng(0).standard_normal((3, Z_DIM), np.float32)
    images = np.random.default_rng(1).uniform(-1, 1, (3, *IMAGE_SHAPE)).astype(np.float32)

    @jax.jit  # one compile per network pair; op by op the DCGAN takes several seconds
    def forward():
        g_vars = generator.init(jax.random.PRNGKey(0), z[:2], train=False)
        d_vars = discriminator.init(jax.random.PRNGKey(1), images[:2], train=False)
        return generator.apply(g_vars, z, train=False), discriminator.apply(d_vars, images,
                                                                            train=False)

    fake, logits = forward()
    assert fake.shape == (3, *IMAGE_SHAPE) and fake.dtype == jnp.float32
    assert float(jnp.min(fake)) >= -1 and float(jnp.max(fake)) <= 1
    assert float(jnp.std(fake)) > 0  # an image, not a constant
    assert logits.shape == (3,)
    assert np.all(np.isfinite(logits)) and float(jnp.std(logits)) > 0


def test_mlp_gan_other_image_shapes():
    generator, discriminator = make_gan('mlp', (8, 12, 3))
    key = jax.random.PRNGKey(0)

    def shapes():  # traced only: shapes without compiling anything
        g_vars = generator.init(key, jnp.zeros((2, 5)), train=False)
        d_vars = discriminator.init(key, jnp.zeros((2, 8, 12, 3)), train=False)
        return (generator.apply(g_vars, jnp.zeros((4, 5)), train=False),
                discriminator.apply(d_vars, jnp.zeros((4, 8, 12, 3)), train=False))

    fake, logits = jax.eval_shape(shapes)
    assert fake.shape == (4, 8, 12, 3) and logits.shape == (4,)


def test_dcgan_widths_and_dropout_are_the_config_s():
    generator, discriminator = make_gan('dcgan', g_width=32, d_width=8, d_dropout=0.0)
    key, x = jax.random.PRNGKey(0), jnp.ones((2, 28, 28, 1))
    g_shapes = jax.eval_shape(lambda: generator.init(key, jnp.zeros((2, Z_DIM)), train=False))
    kernels = [leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(
        g_shapes['params']) if 'kernel' in jax.tree_util.keystr(path)]
    assert kernels[0] == (Z_DIM, 7 * 7 * 32) and (32, 16) in [k[-2:] for k in kernels]
    d_vars = discriminator.init(key, x, train=False)
    assert d_vars['params']['Dense_0']['kernel'].shape == (7 * 7 * 16, 1)  # 2 x d_width maps
    # Without dropout D in train mode is D in eval mode; with it (the earlier default) it is not.
    train = lambda d: d.apply(d_vars, x, train=True, rngs={'dropout': key})
    np.testing.assert_array_equal(train(discriminator), discriminator.apply(d_vars, x,
                                                                            train=False))
    dropped = make_gan('dcgan', g_width=32, d_width=8, d_dropout=0.3)[1]
    assert not np.allclose(train(dropped), dropped.apply(d_vars, x, train=False))


def test_dcgan_generator_rejects_sizes_not_divisible_by_4():
    generator, _ = make_gan('dcgan', (30, 28, 1))
    with pytest.raises(ValueError, match=r'\(30, 28, 1\) must divide by 4'):
        jax.eval_shape(lambda: generator.init(jax.random.PRNGKey(0), jnp.zeros((2, Z_DIM)),
                                              train=False))


def test_unknown_architecture_lists_known_ones():
    with pytest.raises(ValueError, match="unknown GAN architecture 'vae'; known: dcgan, mlp"):
        make_gan('vae')


# Losses on logits whose values are worked out by hand.

REAL, FAKE = jnp.array([0.0, 2.0]), jnp.array([0.0, -1.0])


def softplus(x):
    return math.log(1 + math.exp(x))


@pytest.mark.parametrize('loss, d_expected, g_expected', [
    # D: mean(-log s(r)) + mean(-log(1 - s(f))); G: mean(-log s(f)).
    ('non_saturating',
     (softplus(-0.0) + softplus(-2.0)) / 2 + (softplus(0.0) + softplus(-1.0)) / 2,
     (softplus(-0.0) + softplus(1.0)) / 2),
    # D: mean(relu(1 - r)) + mean(relu(1 + f)) = mean(1, 0) + mean(1, 0); G: -mean(f).
    ('hinge', 1.0, 0.5),
    # D: mean(f) - mean(r) = -0.5 - 1; G: -mean(f).
    ('wasserstein', -1.5, 0.5),
])
def test_losses_on_hand_checked_values(loss, d_expected, g_expected):
    assert float(LOSSES[loss].discriminator(REAL, FAKE)) == pytest.approx(d_expected, rel=1e-6)
    assert float(LOSSES[loss].generator(FAKE)) == pytest.approx(g_expected, rel=1e-6)


def test_non_saturating_loss_does_not_overflow():
    # Confident logits: a naive log(sigmoid(x)) gives log(0) = -inf here.
    d = LOSSES['non_saturating'].discriminator(jnp.array([-200.0]), jnp.array([200.0]))
    g = LOSSES['non_saturating'].generator(jnp.array([-200.0]))
    assert float(d) == pytest.approx(400.0) and float(g) == pytest.approx(200.0)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="unknown GAN loss 'wgan'; known: non_saturating, "
                                         'hinge, wasserstein'):
        lookup(LOSSES, 'wgan', 'GAN loss')
    with pytest.raises(ValueError, match="unknown GAN penalty 'gp2'; known: none, gp, r1"):
        lookup(PENALTIES, 'gp2', 'GAN penalty')
    g, d = make_gan('mlp')
    with pytest.raises(ValueError, match="loss must be a GANLoss"):
        make_gan_step(g, d, None, None, loss='hinge', z_dim=Z_DIM)


@pytest.mark.parametrize('decay', [-0.1, 1.0])
def test_step_rejects_bad_ema_decay(decay):
    g, d = make_gan('mlp')
    with pytest.raises(ValueError, match=f'ema_decay must be in \\[0, 1\\), got {decay}'):
        make_gan_step(g, d, None, None, loss=LOSSES['hinge'], z_dim=Z_DIM, ema_decay=decay)


@pytest.mark.parametrize('option, value', [('critic_steps', 0), ('penalty_every', 0),
                                           ('critic_steps', 1.5), ('penalty_weight', -1.0)])
def test_step_rejects_bad_schedules(option, value):
    g, d = make_gan('mlp')
    with pytest.raises(ValueError, match=f'{option} must be'):
        make_gan_step(g, d, None, None, loss=LOSSES['hinge'], z_dim=Z_DIM,
                      penalty=gradient_penalty, **{option: value})


# Gradient penalty.

@pytest.mark.parametrize('w_scale', [0.5, 1.0, 3.0])
def test_gradient_penalty_of_a_linear_critic(w_scale):
    # D(x) = <w, x> per example has gradient w everywhere: the penalty is (|w| - 1)^2 whatever
    # the interpolation.
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 4, 1)).astype(np.float32)
    w *= w_scale / np.linalg.norm(w)
    d_fn = lambda x: jnp.sum(w * x, axis=(1, 2, 3))
    real = rng.standard_normal((5, 4, 4, 1)).astype(np.float32)
    fake = rng.standard_normal((5, 4, 4, 1)).astype(np.float32)
    for seed in range(3):
        gp = gradient_penalty(d_fn, real, fake, jax.random.PRNGKey(seed))
        assert float(gp) == pytest.approx((w_scale - 1) ** 2, abs=1e-5)


def test_gradient_penalty_is_a_mean_of_per_example_norms():
    # D(x) = |x|^2 / 2 has gradient x; with real == fake the interpolate is x itself, so the
    # penalty is mean((|x_i| - 1)^2) over examples (not one norm over the whole batch).
    norms = np.array([0.0, 1.0, 2.0, 4.0], np.float32)
    x = np.zeros((4, 3, 2, 1), np.float32)
    x[:, 0, 0, 0] = norms
    d_fn = lambda x: 0.5 * jnp.sum(x ** 2, axis=(1, 2, 3))
    gp = gradient_penalty(d_fn, x, x, jax.random.PRNGKey(0))
    assert float(gp) == pytest.approx(np.mean((norms - 1) ** 2), abs=1e-5)


def test_r1_penalty_is_half_the_mean_squared_gradient_norm_at_real_images():
    # D(x) = |x|^2 / 2 has gradient x: R1 = mean(|x_i|^2) / 2 over the real images only (the
    # fakes, far away, must not count).
    norms = np.array([0.0, 1.0, 2.0, 4.0], np.float32)
    real = np.zeros((4, 3, 2, 1), np.float32)
    real[:, 0, 0, 0] = norms
    d_fn = lambda x: 0.5 * jnp.sum(x ** 2, axis=(1, 2, 3))
    r1 = r1_penalty(d_fn, real, real + 100.0, jax.random.PRNGKey(0))
    assert float(r1) == pytest.approx(np.mean(norms ** 2) / 2, rel=1e-6)  # 21 / 8


# The train step, with the MLP GAN (compiles in about a second; the DCGAN takes eight).

BATCH = 8
EMA_DECAY = 0.9


VARIANTS = {'non_saturating': ('non_saturating', {}), 'hinge': ('hinge', {}),
            'wgan_gp': ('wasserstein', {'penalty': gradient_penalty}),
            'r1_lazy_two_critics': ('non_saturating', {'penalty': r1_penalty, 'penalty_every': 2,
                                                       'critic_steps': 2})}


@pytest.fixture(scope='module', params=VARIANTS)
def three_steps(request):
    """Three jitted, donated steps of each loss; the step function may trace only once."""
    loss, options = VARIANTS[request.param]
    gan = build_gan('mlp', loss, ema_decay=EMA_DECAY, **options)
    # chex counts traces by the function's source, which every loss shares.
    chex.clear_trace_counter()
    step = jax.jit(chex.assert_max_traces(gan.step, n=1), donate_argnums=0)
    images = random_images(3 * BATCH)
    state = gan.fresh_state()
    states, metrics = [jax.device_get(state)], []
    for i in range(3):
        # New batch arrays each step: the same shapes and dtypes must not retrace.
        state, m = step(state, {'image': jnp.asarray(images[i * BATCH:(i + 1) * BATCH])})
        states.append(jax.device_get(state))
        metrics.append(jax.device_get(m))
    return request.param, states, metrics


def test_step_metrics_are_finite_scalars(three_steps):
    loss, states, metrics = three_steps
    expected = {'d_loss', 'g_loss', 'd_real_logit', 'd_fake_logit'}
    if loss in ('wgan_gp', 'r1_lazy_two_critics'):
        expected.add('gradient_penalty')
    for m in metrics:
        assert set(m) == expected
        for name, value in m.items():
            assert np.shape(value) == () and np.isfinite(value), (name, value)
    if loss == 'wgan_gp':
        assert all(m['gradient_penalty'] > 0 for m in metrics)
    if loss == 'r1_lazy_two_critics':  # computed at steps 0 and 2 (doubled), skipped at 1
        penalties = [float(m['gradient_penalty']) for m in metrics]
        assert penalties[0] > 0 and penalties[1] == 0.0 and penalties[2] > 0
    assert [int(s.step) for s in states] == [0, 1, 2, 3]
    assert states[-1].step.dtype == np.int32


def test_critic_steps_update_d_n_times_each_on_its_own_slice():
    gan = build_gan('mlp', 'wasserstein', critic_steps=3, penalty=gradient_penalty)
    step = jax.jit(gan.step)
    images = random_images(3 * BATCH)
    state, _ = step(gan.fresh_state(), {'image': images})
    # Adam counts its updates: three of D, one of G.
    assert int(state.d_opt_state[0].count) == 3 and int(state.g_opt_state[0].count) == 1
    for part in range(3):  # every slice of the batch reaches D
        changed = images.copy()
        changed[part * BATCH:(part + 1) * BATCH] = 255 - changed[part * BATCH:(part + 1) * BATCH]
        other, _ = step(gan.fresh_state(), {'image': changed})
        assert not np.array_equal(other.d_params['Dense_0']['kernel'],
                                  state.d_params['Dense_0']['kernel']), part
    with pytest.raises(ValueError, match='batch of 8 does not split into critic_steps=3'):
        step(gan.fresh_state(), {'image': images[:BATCH]})


def test_lazy_penalty_is_the_penalty_times_its_period_on_the_steps_it_runs():
    batch = {'image': random_images(BATCH)}
    plain = build_gan('mlp', penalty=r1_penalty)
    lazy = build_gan('mlp', penalty=r1_penalty, penalty_every=4)
    _, every_step = jax.jit(plain.step)(plain.fresh_state(), batch)
    _, fourth_step = jax.jit(lazy.step)(lazy.fresh_state(), batch)  # step 0: computed
    assert float(every_step['gradient_penalty']) > 0
    assert float(fourth_step['gradient_penalty']) == 4 * float(every_step['gradient_penalty'])


def test_step_updates_both_networks(three_steps):
    _, states, _ = three_steps
    for name in ('g_params', 'd_params'):
        before, after = (getattr(s, name) for s in (states[0], states[1]))
        # Every weight matrix moves. (Not every bias: under hinge and WGAN losses D's output
        # bias gets +1 from each fake and -1 from each real logit, which cancel.)
        for layer in before:
            assert not np.array_equal(before[layer]['kernel'], after[layer]['kernel']), (
                name, layer)


def test_ema_moves_toward_g_params(three_steps):
    _, states, _ = three_steps
    g0, g1 = states[0].g_params, states[1].g_params
    # One step of ema <- decay * ema + (1 - decay) * params, from ema = g0.
    expected = jax.tree.map(lambda a, b: EMA_DECAY * a + (1 - EMA_DECAY) * b, g0, g1)
    chex.assert_trees_all_close(states[1].g_ema, expected, rtol=1e-5, atol=1e-7)
    # After three steps the average lags behind the parameters but has left the start.
    last = states[-1]
    for ema, params, start in zip(*(jax.tree.leaves(t) for t in (last.g_ema, last.g_params,
                                                                    g0))):
        assert not np.allclose(ema, params, rtol=0, atol=1e-7)
        assert np.abs(ema - start).max() > 0
        assert np.abs(ema - params).max() < np.abs(start - params).max()


def test_without_ema_g_ema_is_g_params(mlp_gan):
    state, _ = jax.jit(mlp_gan.step)(mlp_gan.fresh_state(), {'image': random_images(BATCH)})
    chex.assert_trees_all_equal(state.g_ema, state.g_params)


def test_discriminator_learns_to_separate_real_from_fake():
    # G frozen (learning rate 0): D alone must drive its loss down on real vs. fake.
    gan = build_gan('mlp', lr_g=0.0, lr_d=1e-3)
    step = jax.jit(gan.step, donate_argnums=0)
    images = random_images(30 * BATCH)
    state = gan.fresh_state()
    g_start = jax.device_get(state.g_params)
    d_losses = []
    for i in range(30):
        state, metrics = step(state, {'image': images[i * BATCH:(i + 1) * BATCH]})
        d_losses.append(float(metrics['d_loss']))
    assert d_losses[0] == pytest.approx(2 * math.log(2), abs=0.2)  # D starts near chance
    assert np.mean(d_losses[-5:]) < 0.5 * d_losses[0], d_losses
    chex.assert_trees_all_equal(jax.device_get(state.g_params), g_start)


def test_sampler_is_deterministic_uint8(mlp_gan):
    sample = make_sampler(mlp_gan.generator)
    state = mlp_gan.state
    z = jax.random.normal(jax.random.PRNGKey(7), (5, Z_DIM))
    images = np.asarray(sample(state.g_params, state.g_batch_stats, z))
    assert images.shape == (5, *IMAGE_SHAPE) and images.dtype == np.uint8
    np.testing.assert_array_equal(sample(state.g_params, state.g_batch_stats, z), images)
    # The generator's [-1, 1] mapped onto [0, 255].
    x = mlp_gan.generator.apply({'params': state.g_params}, z, train=False)
    np.testing.assert_allclose(images, (np.asarray(x) + 1) * 127.5, atol=0.5 + 1e-3)
    assert images.min() < 100 and images.max() > 155  # spans the range, not a constant
    other = np.asarray(sample(state.g_params, state.g_batch_stats, -z))
    assert not np.array_equal(other, images)


def test_standing_statistics_are_those_of_the_generators_own_activations():
    # Sampling in eval mode with the standing statistics of a batch z gives exactly what the
    # train-mode pass normalising by z's own batch statistics gives; the state's running
    # averages (here those of the initial weights) give something else.
    generator = DCGANGenerator(base=16)
    z = jax.random.normal(jax.random.PRNGKey(0), (64, Z_DIM))
    variables = generator.init(jax.random.PRNGKey(1), z, train=False)
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(2), p.shape),
                          variables['params'])
    stats = make_standing_stats(generator)(params, variables['batch_stats'], z)
    assert jax.tree.structure(stats) == jax.tree.structure(variables['batch_stats'])
    train_mode, _ = generator.apply({'params': params, 'batch_stats': variables['batch_stats']},
                                    z, train=True, mutable=['batch_stats'])
    eval_mode = lambda stats: generator.apply({'params': params, 'batch_stats': stats}, z,
                                              train=False)
    np.testing.assert_allclose(eval_mode(stats), train_mode, atol=2e-5)
    assert np.abs(eval_mode(variables['batch_stats']) - train_mode).max() > 0.1
