"""Populations: member i of a vmapped population follows the single run with seed + i (and its
own learning rate), its metrics are logged per member, and bad settings are refused."""
import jax
import numpy as np
import optax
import pytest

from conftest import IMAGE_SHAPE, Z_DIM, random_images
from experiments import gan_mnist
from research.models.gan import make_gan
from research.objectives.gan import LOSSES, init_gan_state, make_gan_step
from research.train import population

GENERATOR, DISCRIMINATOR = make_gan('mlp', IMAGE_SHAPE)
TX = optax.inject_hyperparams(optax.adam)(2e-4, b1=0.5)
INIT = lambda key: init_gan_state(key, GENERATOR, DISCRIMINATOR, TX, TX, Z_DIM, IMAGE_SHAPE)
STEP = make_gan_step(GENERATOR, DISCRIMINATOR, TX, TX, loss=LOSSES['non_saturating'],
                     z_dim=Z_DIM)


def with_lr(state, lr):
    set_lr = lambda opt: opt._replace(hyperparams={**opt.hyperparams, 'learning_rate': lr})
    return state.replace(g_opt_state=set_lr(state.g_opt_state),
                         d_opt_state=set_lr(state.d_opt_state))


def test_members_follow_their_single_runs():
    lrs = np.array([1e-4, 2e-4, 8e-4], np.float32)
    batches = [{'image': random_images(8, seed=s)} for s in range(3)]
    states = with_lr(jax.jit(jax.vmap(INIT))(population.member_keys(5, 3)), lrs)
    step = jax.jit(population.make_population_step(STEP, 3))
    for batch in batches:
        states, metrics = step(states, batch)
    single_step = jax.jit(STEP)
    for i in range(3):
        single = with_lr(jax.jit(INIT)(jax.random.PRNGKey(5 + i)), lrs[i])
        for batch in batches:
            single, single_metrics = single_step(single, batch)
        # vmapped products sum in another order; Adam magnifies that where gradients are ~0.
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5),
                     population.member(states, i), single)
        assert float(metrics[f'member_{i}/d_loss']) == pytest.approx(
            float(single_metrics['d_loss']), rel=1e-4)
    assert float(metrics['d_loss']) == pytest.approx(
        np.mean([float(metrics[f'member_{i}/d_loss']) for i in range(3)]), rel=1e-6)
    np.testing.assert_array_equal(states.g_opt_state.hyperparams['learning_rate'], lrs)


@pytest.mark.parametrize('overrides, message', [
    ({'population': 0}, 'population must be >= 1, got 0'),
    ({'population': 2, 'population_lr': (1e-4,)},
     'population_lr lists 1 learning rates for a population of 2'),
])
def test_bad_population_settings_are_refused(overrides, message, tmp_path):
    config = gan_mnist.get_config('smoke')
    config.update(overrides)
    with pytest.raises(ValueError, match=message):
        gan_mnist.run(config, str(tmp_path))
    assert not (tmp_path / 'config.json').exists()


def test_init_population_gives_each_member_its_seed_and_learning_rate():
    lrs = (1e-4, 3e-4, 5e-4)
    states = jax.jit(population.init_population(INIT, 5, 3, lrs))(jax.random.PRNGKey(0))
    for i in range(3):
        single = INIT(jax.random.PRNGKey(5 + i))
        jax.tree.map(np.testing.assert_array_equal, population.member(states, i).g_params,
                     single.g_params)
    for opt_state in (states.g_opt_state, states.d_opt_state):
        np.testing.assert_array_equal(opt_state.hyperparams['learning_rate'],
                                      np.array(lrs, np.float32))
    with pytest.raises(ValueError, match='2 learning rates for a population of 3'):
        population.init_population(INIT, 5, 3, lrs[:2])


def test_learning_rates_need_injected_hyperparameters():
    plain = optax.adam(2e-4)
    init = lambda key: init_gan_state(key, GENERATOR, DISCRIMINATOR, plain, plain, Z_DIM,
                                      IMAGE_SHAPE)
    with pytest.raises(ValueError, match='need optimizers made by optax.inject_hyperparams'):
        jax.eval_shape(population.init_population(init, 0, 2, (1e-4, 2e-4)),
                       jax.random.PRNGKey(0))
