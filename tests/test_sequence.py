"""Sequence models, the LM objective and the text data: shapes, causality, the recurrent cells
against plain numpy, the hand-written backward passes against autodiff, generation, windows and
the exact whole-split evaluation."""
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import copy_tree
from research import data
from research.data import text
from research.evals.lm import make_lm_evaluator
from research.models.fast.recurrent import gru_scan, lstm_scan
from research.models.recurrent import RecurrentLayer, gru_cell, lstm_cell
from research.models.sequence import CharRNN, RowLSTMClassifier, make_char_model
from research.models.transformer import Transformer
from research.objectives.lm import init_lm_state, make_generate, make_lm_step, token_nll
from research.objectives.optim import adamw
from research.train import mesh as mesh_lib

V = 11  # vocabulary of the toy models


def init(model, tokens, seed=0):
    # Jitted: op by op, Flax's init of a scan or a Transformer takes seconds.
    return jax.jit(lambda t: model.init(jax.random.PRNGKey(seed), t, train=False))(
        tokens)['params']


# Models.

@pytest.mark.parametrize('model', [
    CharRNN(V, 'lstm', embed=8, hidden=12, layers=2, dropout=0.1),
    CharRNN(V, 'gru', embed=8, hidden=12, layers=1),
    Transformer(V, layers=2, heads=2, width=16, context=9, dropout=0.1),
    Transformer(V, layers=1, heads=2, width=16, context=9, positions='rope', tie_weights=False),
], ids=['lstm', 'gru', 'transformer', 'transformer_rope_untied'])
def test_char_models_shapes_and_causality(model):
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, V, (3, 9)), jnp.int32)
    params = init(model, tokens)
    apply = jax.jit(lambda tokens: model.apply({'params': params}, tokens))
    logits = apply(tokens)
    assert logits.shape == (3, 9, V) and bool(jnp.all(jnp.isfinite(logits)))
    train = jax.eval_shape(lambda: model.apply({'params': params}, tokens, train=True,
                                                rngs={'dropout': jax.random.PRNGKey(1)}))
    assert train.shape == logits.shape
    for j in (0, 4, 8):  # changing token j never changes an earlier output, and changes its own
        changed = apply(tokens.at[:, j].set((tokens[:, j] + 1) % V))
        np.testing.assert_array_equal(changed[:, :j], logits[:, :j])
        assert not np.allclose(changed[:, j], logits[:, j])


def test_row_classifier_shape_and_unknown_kinds():
    model = RowLSTMClassifier(hidden=8, layers=2)
    x = jnp.zeros((2, 28, 28, 1))
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
    assert jax.eval_shape(lambda p: model.apply(p, x), params).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown model kind 'rnn'; known: lstm, gru, "
                       'transformer'):
        make_char_model('rnn', V)
    with pytest.raises(ValueError, match='sequence length 10 exceeds the context 9'):
        init(Transformer(V, 1, 2, 16, context=9), jnp.zeros((1, 10), jnp.int32))


def numpy_rnn(kind, x, w_x, b_x, w_h, b_h):
    """Plain numpy LSTM (gates i, f, g, o) or GRU (r, z, n; PyTorch's equations), x (B, T, D)."""
    sigmoid = lambda v: 1 / (1 + np.exp(-v))
    b, t, _ = x.shape
    hidden = w_h.shape[0]
    h, c, out = np.zeros((b, hidden)), np.zeros((b, hidden)), []
    for step in range(t):
        gx = x[:, step] @ w_x + b_x
        gh = h @ w_h + b_h
        if kind == 'lstm':
            i, f, g, o = np.split(gx + gh, 4, axis=1)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
        else:
            (xr, xz, xn), (hr, hz, hn) = np.split(gx, 3, axis=1), np.split(gh, 3, axis=1)
            r, z = sigmoid(xr + hr), sigmoid(xz + hz)
            h = (1 - z) * np.tanh(xn + r * hn) + z * h
        out.append(h)
    return np.stack(out, axis=1)


@pytest.mark.parametrize('kind, gates', [('lstm', 4), ('gru', 3)])
def test_recurrent_layers_match_plain_numpy(kind, gates):
    rng = np.random.default_rng(0)
    b, t, d, hidden = 3, 6, 5, 4
    x = rng.normal(size=(b, t, d)).astype(np.float32)
    w_x, b_x = rng.normal(size=(d, gates * hidden)), rng.normal(size=gates * hidden)
    w_h, b_h = rng.normal(size=(hidden, gates * hidden)), rng.normal(size=gates * hidden)
    params = {'input': {'kernel': w_x, 'bias': b_x}, 'recurrent': w_h}
    if kind == 'gru':
        params['recurrent_bias'] = b_h
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params)
    for unroll in (1, 4):
        out = RecurrentLayer(kind, hidden, unroll).apply({'params': params},
                                                         jnp.asarray(x.swapaxes(0, 1)))
        out = jnp.swapaxes(out, 0, 1)  # the layer is time-major
        expected = numpy_rnn(kind, x, w_x, b_x, w_h, b_h if kind == 'gru' else 0.0)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_hand_written_backward_passes_match_autodiff():
    rng = np.random.default_rng(1)
    t, b, hidden = 7, 3, 5
    target = jnp.asarray(rng.normal(size=(t, b, hidden)), jnp.float32)
    loss = lambda hs: jnp.sum(jnp.sin(hs) * target)
    w = jnp.asarray(rng.normal(size=(hidden, 4 * hidden)) * 0.5, jnp.float32)
    gx = jnp.asarray(rng.normal(size=(t, b, 4 * hidden)), jnp.float32)

    def plain_lstm(gx, w):
        zeros = jnp.zeros((b, hidden))
        return jax.lax.scan(lambda c, g: (lstm_cell(g, c, w),) * 2, (zeros, zeros), gx)[1][0]

    chex.assert_trees_all_close(jax.grad(lambda *a: loss(lstm_scan(*a, 2)), (0, 1))(gx, w),
                                jax.grad(lambda *a: loss(plain_lstm(*a)), (0, 1))(gx, w),
                                rtol=1e-5, atol=1e-5)
    gx3, w3 = gx[..., :3 * hidden], w[:, :3 * hidden]
    b_h = jnp.asarray(rng.normal(size=3 * hidden), jnp.float32)

    def plain_gru(gx, w, b_h):
        return jax.lax.scan(lambda h, g: (gru_cell(g, h, w, b_h),) * 2, jnp.zeros((b, hidden)),
                            gx)[1]

    chex.assert_trees_all_close(jax.grad(lambda *a: loss(gru_scan(*a, 1)), (0, 1, 2))(gx3, w3, b_h),
                                jax.grad(lambda *a: loss(plain_gru(*a)), (0, 1, 2))(gx3, w3, b_h),
                                rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kind', ['lstm', 'gru'])
def test_token_path_equals_embedding_then_layer_with_gradients(kind):
    """With tokens, the first layer gathers rows of the projected table inside the scan and
    scatter-adds their gradients: the same function and gradients as embedding then layer."""
    rng = np.random.default_rng(2)
    t, b, vocab, d, hidden = 32, 3, 7, 5, 4  # 32 steps: the LSTM backward runs in 2 chunks
    tokens = jnp.asarray(rng.integers(0, vocab, (t, b)), jnp.int32)
    table = jnp.asarray(rng.normal(size=(vocab, d)), jnp.float32)
    layer = RecurrentLayer(kind, hidden)
    params = layer.init(jax.random.PRNGKey(0), table[tokens])['params']
    target = jnp.asarray(rng.normal(size=(t, b, hidden)), jnp.float32)
    loss = lambda out: jnp.sum(jnp.sin(out) * target)
    via_tokens = lambda p, e: loss(layer.apply({'params': p}, e, tokens))
    via_rows = lambda p, e: loss(layer.apply({'params': p}, e[tokens]))
    np.testing.assert_allclose(via_tokens(params, table), via_rows(params, table), rtol=1e-6)
    chex.assert_trees_all_close(jax.grad(via_tokens, (0, 1))(params, table),
                                jax.grad(via_rows, (0, 1))(params, table), rtol=1e-5, atol=1e-6)


# The step and generation.

def test_step_traces_once_loss_falls_and_is_a_function_of_rng_and_step():
    model = CharRNN(V, 'lstm', embed=8, hidden=32, dropout=0.1)
    tx = adamw(2e-2, 40, warmup_steps=2, final_lr=2e-3, b2=0.99, decay='matrices', clip=1.0)
    state = jax.jit(lambda key: init_lm_state(key, model, tx, 12))(jax.random.PRNGKey(0))
    tokens = np.arange(16 * 13).reshape(16, 13) % 5  # a cycle: fully predictable
    batch = {'tokens': jnp.asarray(tokens, jnp.int32)}
    chex.clear_trace_counter()
    step = jax.jit(chex.assert_max_traces(make_lm_step(model, tx), n=1), donate_argnums=0)
    first, _ = step(copy_tree(state), batch)
    again, _ = step(copy_tree(state), batch)
    chex.assert_trees_all_equal(first.params, again.params)
    losses = []
    for _ in range(40):
        state, metrics = step(state, batch)
        losses.append(float(metrics['loss']))
    assert losses[-1] < 0.2 * losses[0], losses


@pytest.fixture(scope='module')
def tiny_transformer():
    model = Transformer(V, layers=1, heads=2, width=16, context=8)
    return model, init(model, jnp.zeros((1, 8), jnp.int32), seed=3)


def test_generation_is_seeded_greedy_at_top_k_1_and_exact_past_the_context(tiny_transformer):
    model, params = tiny_transformer
    prompt = jnp.asarray([[1, 2, 3, 4, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3, 2, 1]], jnp.int32)
    sample = make_generate(model, 8, 6)
    key = jax.random.PRNGKey(0)
    out = np.asarray(sample(params, prompt, key, 1.0))
    assert out.shape == (2, 14) and np.all(out[:, :8] == prompt)
    np.testing.assert_array_equal(out, sample(params, prompt, key, 1.0))
    assert not np.array_equal(out, sample(params, prompt, jax.random.PRNGKey(1), 1.0))
    # Greedy reference, one Python step per character, on the last 8 tokens (the context).
    apply = jax.jit(lambda tokens: model.apply({'params': params}, tokens))
    tokens = np.asarray(prompt)
    for _ in range(6):
        logits = apply(jnp.asarray(tokens[:, -8:]))
        tokens = np.concatenate([tokens, np.argmax(logits[:, -1], axis=-1)[:, None]], axis=1)
    greedy = make_generate(model, 8, 6, top_k=1)(params, prompt, key, 1.0)
    np.testing.assert_array_equal(greedy, tokens)


def test_top_k_draws_only_the_k_most_likely(tiny_transformer):
    model, params = tiny_transformer
    prompt = jnp.zeros((64, 1), jnp.int32)
    out = make_generate(model, 8, 7, top_k=3)(params, prompt, jax.random.PRNGKey(0), 5.0)
    logits = model.apply({'params': params}, out[:, :-1])  # 8 tokens: all within the context
    ranks = np.sum(np.asarray(logits) > np.take_along_axis(
        np.asarray(logits), np.asarray(out)[:, 1:, None], -1), axis=-1)
    assert ranks.max() == 2  # hot sampling reaches the 3rd most likely, never the 4th
    assert len(np.unique(np.asarray(out[:, 1]))) == 3


# Text data and the whole-split evaluation.

def test_windows_restart_exactly_and_shard_over_processes():
    tokens = np.arange(1000, dtype=np.int32)
    a = text.WindowPipeline(tokens, 16, 8, seed=3, process_index=0, process_count=1)
    b = text.WindowPipeline(tokens, 16, 8, seed=3, process_index=0, process_count=1)
    batch = a.batch(5)['tokens']
    assert batch.shape == (8, 17) and batch.dtype == np.int32
    np.testing.assert_array_equal(np.diff(batch, axis=1), 1)  # contiguous windows
    np.testing.assert_array_equal(batch, b.batch(5)['tokens'])
    np.testing.assert_array_equal(next(b.iterate(5))['tokens'], batch)
    assert not np.array_equal(batch, a.batch(6)['tokens'])
    halves = [text.WindowPipeline(tokens, 16, 8, seed=3, process_index=p, process_count=2)
              .batch(5)['tokens'] for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), batch)
    with pytest.raises(ValueError, match='global_batch=7 must be a positive multiple of '
                       'process_count=2'):
        text.WindowPipeline(tokens, 16, 7, seed=0, process_index=0, process_count=2)


def test_eval_windows_cover_every_target_once():
    windows = text.eval_windows(np.arange(10), 4)  # 9 targets: 3 windows, 3 padded slots
    np.testing.assert_array_equal(windows, [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8],
                                            [8, 9, -1, -1, -1]])
    targets = windows[:, 1:][windows[:, 1:] >= 0]
    np.testing.assert_array_equal(targets, np.arange(1, 10))
    assert text.eval_windows(np.arange(9), 4).shape == (2, 5)  # 8 targets: exactly 2 windows


def test_whole_split_loss_is_exact(tiny_transformer):
    model, params = tiny_transformer
    tokens = np.random.default_rng(0).integers(0, V, 8 * 5 + 4).astype(np.int32)  # 43 targets
    evaluate = make_lm_evaluator(model, 8, batch_size=8, mesh=mesh_lib.data_mesh())
    result = evaluate(params, tokens)
    total = 0.0  # by hand: each window of up to 8 targets on its own, the short last one too
    for start in range(0, len(tokens) - 1, 8):
        chunk = jnp.asarray(tokens[start:start + 9][None])
        total += float(jnp.sum(token_nll(model.apply({'params': params}, chunk[:, :-1]),
                                         chunk[:, 1:])))
    assert result['chars'] == len(tokens) - 1
    assert result['loss'] == pytest.approx(total / (len(tokens) - 1), rel=1e-5)
    assert result['bits_per_char'] == pytest.approx(result['loss'] / np.log(2))


def test_missing_corpus_fails_at_once_naming_the_options(tmp_path, monkeypatch):
    monkeypatch.setattr(text, '_tfds_usable', lambda: (False, 'stubbed out by the test'))
    monkeypatch.setattr(text, 'REPO_ROOT', tmp_path)
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(data.CorpusUnavailableError,
                       match=r'(?s)no text corpus.*dir: data\.path not given.*input\.txt: not a '
                       r'file.*download: offline: http://127.0.0.1:9/input.txt.*tfds: '
                       r'tensorflow-datasets tiny_shakespeare: stubbed out.*'
                       r'--config\.data\.path=FILE.*network'):
        text.load_corpus('')
    assert time.perf_counter() - t0 < 1.0
    with pytest.raises(data.CorpusUnavailableError, match="data.path 'nope.txt' is not a file"):
        text.load_corpus('nope.txt')
    (tmp_path / 'corpus.txt').write_text('to be or not to be ' * 10)
    corpus, source = text.load_corpus(str(tmp_path / 'corpus.txt'))
    assert corpus.startswith('to be') and 'corpus.txt' in source
    assert {'dataset': 'text', 'split': '', 'source': 'dir', 'where': source,
            'characters': len(corpus)} in data.loaded()
    with pytest.raises(data.CorpusUnavailableError,
                       match="(?s)data.source 'embedded' was asked for.*embedded: no text"):
        text.load_corpus('', 'embedded')
    with pytest.raises(data.CorpusUnavailableError, match="names a file, but data.source is "
                                                          "'tfds'"):
        text.load_corpus(str(tmp_path / 'corpus.txt'), 'tfds')


def test_vocab_round_trip_and_a_changed_corpus_is_refused(tmp_path):
    corpus = 'hello world, hello words'
    vocab = text.Vocab.from_text(corpus)
    assert vocab.decode(vocab.encode(corpus)) == corpus and len(vocab) == len(set(corpus))
    saved, path = text.vocab_record(vocab, corpus, 'a'), str(tmp_path / 'vocab.json')
    text.check_vocab(saved, text.vocab_record(vocab, corpus, 'a'), path)  # the same corpus resumes
    with pytest.raises(ValueError, match=r'vocab\.json: the corpus differs.*chars'):
        other = corpus + 'Z'
        text.check_vocab(saved, text.vocab_record(text.Vocab.from_text(other), other, 'b'), path)
    with pytest.raises(ValueError, match=r'vocab\.json: the corpus differs.*corpus_chars'):
        text.check_vocab(saved, text.vocab_record(vocab, corpus + 'hello', 'b'), path)
    with pytest.raises(ValueError, match="character 'Q' is not in the vocabulary"):
        vocab.encode('Q')
    train, validation = text.split_tokens(np.arange(100))
    assert list(train) == list(range(90)) and list(validation) == list(range(90, 100))
