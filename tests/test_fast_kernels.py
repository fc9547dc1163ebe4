"""The fast kernels (research/models/fast/) against the plain layers they stand in for.

Each fast kernel must be a drop-in replacement: the same parameter names, shapes and initial
values, and the same outputs and gradients to float32 rounding. First the transposed
convolutions of `fast/convs.py` layer by layer against `nn.ConvTranspose`; then every model with
a `fast` field, fast against plain; then `use_fast`, which picks the mode for a backend.
"""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models.fast import KERNELS, convs, use_fast
from research.models.fast.recurrent import _chunks
from research.models.gan import DCGANDiscriminator, DCGANGenerator
from research.models.recurrent import RecurrentLayer
from research.models.sequence import CharRNN, RowLSTMClassifier
from research.models.vae import ConvDecoder

# The transposed convolutions, layer by layer.

# Which fast layer stands in for which Flax layer: kind -> (class name, Flax constructor).
KINDS = {
    'subpixel': ('SubpixelConvTranspose', lambda k, s, o, bias: nn.ConvTranspose(
        o, (k, k), strides=(s, s), padding='SAME', use_bias=bias)),
    'strided': ('StridedConv', lambda k, s, o, bias: nn.Conv(
        o, (k, k), strides=(s, s), padding='SAME', use_bias=bias)),
}

# (kernel, stride, (height, width), in channels, out channels). Non-square inputs catch a swapped
# height and width; kernels smaller than, equal to and larger than the stride cover every branch
# of the padding arithmetic.
CASES = {
    'subpixel': [
        (5, 2, (7, 7), 8, 4),     # DCGAN G: 7x7 -> 14x14
        (5, 2, (14, 14), 4, 1),   # DCGAN G: 14x14 -> 28x28
        (5, 2, (28, 28), 2, 3),
        (4, 2, (6, 5), 3, 2),
        (3, 2, (5, 7), 3, 2),
        (5, 1, (6, 4), 3, 2),
        (3, 3, (4, 5), 2, 3),
        (2, 2, (3, 4), 2, 2),
        (1, 2, (3, 3), 2, 2),
        (6, 3, (4, 3), 2, 2),
    ],
    'strided': [
        (5, 2, (14, 14), 8, 4),   # DCGAN D: 14x14 -> 7x7
        (5, 2, (28, 28), 1, 3),   # DCGAN D: 28x28 -> 14x14
        (5, 2, (7, 7), 3, 2),     # odd sizes: 'SAME' pads 2 before, 2 after
        (4, 2, (6, 5), 3, 2),     # one even and one odd side: other pads per axis
        (3, 2, (5, 8), 2, 3),
        (3, 3, (4, 5), 2, 3),
        (2, 2, (3, 4), 2, 2),
        (1, 2, (3, 3), 2, 2),
        (6, 3, (4, 3), 2, 2),     # kernel larger than the image
    ],
}


def fast_class(kind):
    return getattr(convs, KINDS[kind][0])


def case_id(case):
    k, s, (h, w), cin, cout = case
    return f'k{k}s{s}_{h}x{w}_{cin}to{cout}'


def flax_layer(kind, k, s, cout, use_bias):
    return KINDS[kind][1](k, s, cout, use_bias)


def fast_layer(kind, k, s, cout, use_bias):
    return fast_class(kind)(cout, k, s, use_bias=use_bias)


def assert_close(actual, expected, what):
    # Float32 sums in a different order: tolerance relative to the scale of the values.
    scale = max(float(np.max(np.abs(expected))), 1e-3)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * scale, err_msg=what)


def check_against_flax(kind, case, use_bias):
    k, s, (h, w), cin, cout = case
    rng = np.random.default_rng([k, s, h, w, cin, cout])
    # numpy draws: every new shape of an eager jax.random call costs a compile of its own.
    x = rng.standard_normal((2, h, w, cin), np.float32)
    ref, fast = flax_layer(kind, k, s, cout, use_bias), fast_layer(kind, k, s, cout, use_bias)

    # Drop-in: the same parameter names and shapes.
    init_shapes = lambda layer: jax.eval_shape(layer.init, jax.random.PRNGKey(0), x)['params']
    ref_shapes = init_shapes(ref)
    assert init_shapes(fast) == ref_shapes
    assert set(ref_shapes) == ({'kernel', 'bias'} if use_bias else {'kernel'})
    # Random values everywhere (Flax initialises the bias to zero, which would hide its use).
    params = jax.tree.map(lambda p: rng.standard_normal(p.shape, np.float32), ref_shapes)

    out_shape = jax.eval_shape(lambda: ref.apply({'params': params}, x)).shape
    r = rng.standard_normal(out_shape, np.float32)

    @jax.jit  # one compile per case: op by op, every small op would compile separately
    def outputs_and_grads():
        results = []
        for layer in (ref, fast):
            # A random linear functional of the output: its gradient w.r.t. the parameters
            # and the input is the layer's whole backward pass applied to r.
            objective = lambda p, inputs: jnp.sum(layer.apply({'params': p}, inputs) * r)
            results.append((layer.apply({'params': params}, x),
                            jax.grad(objective, argnums=(0, 1))(params, x)))
        return results

    (y_ref, (gp_ref, gx_ref)), (y_fast, (gp_fast, gx_fast)) = outputs_and_grads()
    # the reference is the layer we think it is
    assert y_ref.shape == ((2, h * s, w * s, cout) if kind != 'strided' else
                           (2, -(-h // s), -(-w // s), cout))
    assert y_fast.shape == y_ref.shape
    assert_close(y_fast, y_ref, 'outputs')
    assert_close(gx_fast, gx_ref, 'input gradient')
    assert set(gp_fast) == set(gp_ref)
    for name in gp_ref:
        assert_close(gp_fast[name], gp_ref[name], f'{name} gradient')


# Every case with a (random) bias; the bias-free variant on a few, since the bias is added after
# the part of the computation the rewrite changes.
def with_and_without_bias(kind, no_bias_cases=3):
    cases = CASES[kind]
    return ([pytest.param(kind, c, True, id=f'{kind}-{case_id(c)}-bias') for c in cases]
            + [pytest.param(kind, c, False, id=f'{kind}-{case_id(c)}-nobias')
               for c in cases[:no_bias_cases]])


@pytest.mark.parametrize('kind, case, use_bias', with_and_without_bias('subpixel'))
def test_subpixel_conv_transpose_matches_flax(kind, case, use_bias):
    check_against_flax(kind, case, use_bias)


@pytest.mark.parametrize('kind, case, use_bias', with_and_without_bias('strided'))
def test_strided_conv_matches_flax(kind, case, use_bias):
    check_against_flax(kind, case, use_bias)


def test_same_initialisers_as_flax():
    # The same key draws the same initial values: a checkpoint of either layer fits the other.
    kinds = list(KINDS)
    x = jnp.zeros((1, 8, 6, 3))
    key = jax.random.PRNGKey(3)
    pairs = [(flax_layer(kind, 5, 2, 4, True), fast_layer(kind, 5, 2, 4, True)) for kind in kinds]
    init = jax.jit(lambda: [(ref.init(key, x)['params'], fast.init(key, x)['params'])
                            for ref, fast in pairs])
    for kind, (ref_params, fast_params) in zip(kinds, init()):
        assert float(jnp.std(ref_params['kernel'])) > 0.01  # not a degenerate draw
        for name in ('kernel', 'bias'):
            np.testing.assert_array_equal(fast_params[name], ref_params[name], err_msg=kind)


# Whole models, fast against plain.

def fast_and_plain(make, args, wrt, **call):
    """Runs `make(fast)` in both modes on the same variables: per mode, its initial variables,
    its outputs (with any updated batch statistics) and the gradients of a random linear
    functional of the outputs w.r.t. the parameters and args[i] for i in `wrt`. The parameters
    are the fast mode's initial ones plus noise, so that zero-initialised biases count too."""
    init_key, noise_key, dropout_key = jax.random.split(jax.random.PRNGKey(0), 3)
    models = [make(fast) for fast in (True, False)]

    @jax.jit  # one compile for both modes: op by op, every small op would compile separately
    def run(args):
        inits = [m.init({'params': init_key, 'dropout': dropout_key}, *args, **call)
                 for m in models]
        leaves, treedef = jax.tree.flatten(inits[0]['params'])
        keys = jax.random.split(noise_key, len(leaves))
        params = treedef.unflatten([p + 0.1 * jax.random.normal(k, p.shape)
                                    for p, k in zip(leaves, keys)])
        state = {name: v for name, v in inits[0].items() if name != 'params'}
        results = []
        for model in models:
            def objective(params, *diff_args):
                full = list(args)
                for i, a in zip(wrt, diff_args):
                    full[i] = a
                y, new_state = model.apply({'params': params, **state}, *full,
                                           rngs={'dropout': dropout_key},
                                           mutable=list(state), **call)
                r = jax.random.normal(jax.random.fold_in(noise_key, 1), y.shape)
                return jnp.sum(y * r), (y, new_state)

            grads, outputs = jax.grad(objective, tuple(range(1 + len(wrt))), has_aux=True)(
                params, *[args[i] for i in wrt])
            results.append((outputs, grads))
        return inits, results

    return run(args)


def assert_modes_agree(make, args, wrt, **call):
    inits, ((out_fast, grads_fast), (out_plain, grads_plain)) = fast_and_plain(
        make, args, wrt, **call)
    # The same parameter tree with the same initial values: checkpoints of either mode fit both.
    chex.assert_trees_all_equal(inits[0], inits[1])
    assert float(jnp.std(out_plain[0])) > 1e-3  # not a degenerate output
    fast, plain = (out_fast, grads_fast), (out_plain, grads_plain)
    chex.assert_trees_all_equal_structs(fast, plain)
    for (path, b), a in zip(jax.tree_util.tree_flatten_with_path(plain)[0], jax.tree.leaves(fast)):
        # Float32 sums in a different order, through BatchNorm or 32 recurrent steps.
        scale = max(float(np.max(np.abs(b))), 1e-3)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=f'(outputs, gradients){jax.tree_util.keystr(path)}')


def test_dcgan_generator_fast_equals_plain_in_train_mode():
    z = jnp.asarray(np.random.default_rng(0).standard_normal((4, 100)), jnp.float32)
    assert_modes_agree(lambda fast: DCGANGenerator(base=16, fast=fast), (z,), (0,), train=True)


def test_dcgan_discriminator_fast_equals_plain_in_train_mode():
    # dropout on: the same mask in both modes (one key); gradients w.r.t. the images too, as the
    # generator's update takes them
    images = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, (4, 28, 28, 1)), jnp.float32)
    assert_modes_agree(lambda fast: DCGANDiscriminator(width=8, fast=fast), (images,), (0,),
                       train=True)


@pytest.mark.parametrize('out_shape, widths', [((28, 28, 2), (64, 32)), ((8, 16, 1), (8, 4, 4))])
def test_conv_decoder_fast_equals_plain(out_shape, widths):
    z = jnp.asarray(np.random.default_rng(1).standard_normal((3, 5)), jnp.float32)
    assert_modes_agree(lambda fast: ConvDecoder(out_shape, widths, fast=fast), (z,), (0,))


@pytest.mark.parametrize('kind', ['lstm', 'gru'])
@pytest.mark.parametrize('path', ['dense', 'tokens'])
def test_recurrent_layer_fast_equals_plain(kind, path):
    # T = 128, the char LSTM's default context: the LSTM token-path backward runs in the 8
    # time chunks it runs in there.
    t, b, vocab, d, hidden = 128, 3, 7, 5, 6
    assert _chunks(t) == 8
    rng = np.random.default_rng(2)
    if path == 'dense':
        args = (jnp.asarray(rng.standard_normal((t, b, d)), jnp.float32),)
    else:
        args = (jnp.asarray(rng.standard_normal((vocab, d)), jnp.float32),
                jnp.asarray(rng.integers(0, vocab, (t, b)), jnp.int32))
    assert_modes_agree(lambda fast: RecurrentLayer(kind, hidden, fast=fast), args, (0,))


@pytest.mark.parametrize('kind', ['lstm', 'gru'])
def test_char_rnn_fast_equals_plain(kind):
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 11, (3, 16)), jnp.int32)
    make = lambda fast: CharRNN(11, kind, embed=6, hidden=8, layers=2, dropout=0.25, fast=fast)
    assert_modes_agree(make, (tokens,), (), train=True)


def test_row_lstm_classifier_fast_equals_plain():
    images = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (3, 8, 6, 1)), jnp.float32)
    make = lambda fast: RowLSTMClassifier(hidden=8, layers=2, dropout=0.25, fast=fast)
    assert_modes_agree(make, (images,), (0,), train=True)


# Which mode a run gets.

def test_use_fast_picks_the_fast_kernels_on_cpu_only_for_auto():
    assert KERNELS == ('auto', 'fast', 'plain')
    assert use_fast('auto', 'cpu') and not use_fast('auto', 'gpu')
    assert not use_fast('auto', 'tpu')
    assert use_fast('auto') == (jax.default_backend() == 'cpu')
    for backend in ('cpu', 'gpu'):
        assert use_fast('fast', backend) and not use_fast('plain', backend)
    with pytest.raises(ValueError, match="unknown model.kernels 'x'; known: auto, fast, plain"):
        use_fast('x')
