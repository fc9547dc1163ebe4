"""Mixed precision (research.train.precision): exact on hand-checked cases, complete (no float32
matmul left, inside scans and conds too), and every experiment's step trains under it with its
first losses close to float32's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import bench
from experiments import classifier as classifier_exp, rowwise_mnist
from research.models.classifier import make_classifier
from research.models.sequence import RowLSTMClassifier
from research.objectives.classifier import init_classifier_state, make_classifier_step
from research.objectives.optim import adamw
from research.train import precision


def _operand_dtypes(fn, *args) -> list:
    """(lhs, rhs) dtypes of every dot_general/conv in fn's jaxpr, nested jaxprs included; an
    operand rounded to bfloat16 and back (emulated bf16) counts as 'bfloat16->float32'."""
    found = []

    def walk(jaxpr):
        made_by = {out: eqn for eqn in jaxpr.eqns for out in eqn.outvars}

        def dtype(v):
            eqn = made_by.get(v)
            if (eqn is not None and eqn.primitive.name == 'convert_element_type'
                    and eqn.invars[0].aval.dtype == jnp.bfloat16):
                return f'bfloat16->{v.aval.dtype}'
            return str(v.aval.dtype)

        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ('dot_general', 'conv_general_dilated'):
                found.append((dtype(eqn.invars[0]), dtype(eqn.invars[1])))
            for value in eqn.params.values():
                for item in value if type(value) in (tuple, list) else (value,):
                    if hasattr(item, 'jaxpr') and hasattr(item, 'consts'):
                        walk(item.jaxpr)
    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def test_f32_is_the_step_itself_and_an_unknown_precision_is_named():
    step = lambda s, b: (s, {})
    assert precision.apply(step, 'f32') is step
    with pytest.raises(ValueError, match="train.precision must be one of f32, bf16, got 'fp16'"):
        precision.apply(step, 'fp16')


def test_a_matmul_takes_bf16_inputs_and_returns_f32():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).normal(size=(8, 3)), jnp.float32)
    f = lambda x, w: jnp.tanh(x @ w) + x.sum()
    expected = jnp.tanh(jnp.dot(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16),
                                preferred_element_type=jnp.float32)) + x.sum()
    out = precision.apply(f, 'bf16', native=True)(x, w)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, expected)  # the same rounding, exactly
    assert not np.array_equal(out, f(x, w))  # and not float32's
    # the CPU's emulation (operands rounded, float32 products, which are exact) agrees but for
    # the order of summation
    emulated = precision.apply(f, 'bf16', native=False)(x, w)
    np.testing.assert_allclose(emulated, expected, rtol=1e-6)
    assert np.abs(emulated - f(x, w)).max() > 100 * np.abs(emulated - expected).max()


def test_matmuls_inside_scan_cond_custom_jvp_and_grad_are_all_cast():
    def f(w, x):
        def body(h, _):
            h = jax.lax.cond(h.sum() > 0, lambda h: jax.nn.relu(h @ w), lambda h: h @ w.T, h)
            return jax.nn.gelu(h), None
        h, _ = jax.lax.scan(body, x, None, length=3)
        conv = jax.lax.conv(h[None, None], w[None, None], (1, 1), 'SAME')
        return (h ** 2).sum() + conv.sum()

    w, x = jnp.eye(4) * 0.5, jnp.ones((2, 4))
    step = jax.value_and_grad(f)
    plain = _operand_dtypes(step, w, x)
    native = _operand_dtypes(precision.apply(step, 'bf16', native=True), w, x)
    emulated = _operand_dtypes(precision.apply(step, 'bf16', native=False), w, x)
    assert len(plain) == len(native) == len(emulated) >= 8  # fwd and bwd, both branches, conv
    assert set(plain) == {('float32', 'float32')}
    assert set(native) == {('bfloat16', 'bfloat16')}
    assert set(emulated) == {('bfloat16->float32', 'bfloat16->float32')}
    value, grad = jax.jit(precision.apply(step, 'bf16'))(w, x)
    assert value.dtype == grad.dtype == jnp.float32
    np.testing.assert_allclose(value, step(w, x)[0], rtol=2e-2)


def _classifier_setup(batch: int, model):
    images = bench.images(batch)['image']
    labels = jnp.arange(batch) % 10
    tx = adamw(1e-3, 100, warmup_steps=0, weight_decay=0.0)
    state = init_classifier_state(jax.random.PRNGKey(0), model, tx, images.shape[1:])
    return state, make_classifier_step(model, tx), {'image': images, 'label': labels}


def _cnn(batch):
    m = classifier_exp.get_config().model
    return _classifier_setup(batch, make_classifier(m.arch, hidden=m.hidden, dropout=0.0))


def _rowwise(batch):
    m = rowwise_mnist.get_config().model
    return _classifier_setup(batch, RowLSTMClassifier(m.hidden, m.layers, 0.0, kind=m.kind))


# One step of each experiment at its default settings (a small batch): gan_mnist (DCGAN),
# vae_mnist (MLP VAE), dbn_mnist (its RBM's CD step), char_lm (the baby GPT), rowwise_mnist,
# classifier (the CNN). Measured on an Intel Xeon (emulated bf16, as on any CPU), the largest
# relative difference of a loss from float32's over the first 3 steps: RBM 0.25%, CNN 0.22%,
# VAE 0.09%, DCGAN 0.02%, row-wise LSTM and char transformer under 0.01%; 1% is the tolerance.
STEPS = {'dcgan': lambda b: bench.MODELS['dcgan'](b, 'auto'),
         'vae': lambda b: bench.MODELS['vae'](b, 'auto'),
         'rbm': lambda b: bench.MODELS['rbm'](b, 'auto'),
         'transformer': lambda b: bench.MODELS['transformer'](b, 'auto'),
         'rowwise': _rowwise, 'cnn': _cnn}
LOSSES = {'dcgan': ('d_loss', 'g_loss'), 'vae': ('loss',), 'rbm': ('recon_error',),
          'transformer': ('loss',), 'rowwise': ('loss',), 'cnn': ('loss',)}


@pytest.mark.parametrize('model', sorted(STEPS))
def test_every_experiment_trains_under_bf16_close_to_f32(model):
    state, step, batch = STEPS[model](8)
    runs = {}
    for name in precision.PRECISIONS:
        s, losses = jax.tree.map(jnp.copy, state), []
        compiled = jax.jit(precision.apply(step, name))
        for _ in range(3):
            s, metrics = compiled(s, batch)
            losses.append({k: float(metrics[k]) for k in LOSSES[model]})
        assert jax.tree.map(lambda a: a.dtype, s) == jax.tree.map(lambda a: a.dtype, state)
        runs[name] = losses
    assert runs['bf16'] != runs['f32']  # the matmuls did change
    for f32, bf16 in zip(runs['f32'], runs['bf16']):
        for key in f32:
            assert np.isfinite(bf16[key])
            assert abs(bf16[key] - f32[key]) <= 0.01 * abs(f32[key]), (key, runs)
