r"""Character-level language models on tiny shakespeare: Transformer, LSTM or GRU.

    python -m experiments.char_lm                                      # default: small Transformer
    python -m experiments.char_lm --config=experiments/char_lm.py:lstm
    python -m experiments.char_lm --config=experiments/char_lm.py:gpt --workdir runs/char_gpt  # GPU
    python -m experiments.char_lm --config.data.path=my_corpus.txt    # any UTF-8 text

Corpus: data.path, else tfds tiny_shakespeare, else ../shared/data/tinyshakespeare/input.txt;
first 90% train, last 10% validate (all 111,539 predicted characters, in nats and bits per
char); vocab.json pins the corpus for resumption; samples/ gets a sample every sample.every
steps. Reference machine (2 Intel Xeon cores): default (4-layer Transformer, 0.81M parameters,
1,800 steps, chosen on data.holdout) 3 min 34 s, validation 1.7115 nats/char; lstm (2 x 256,
1,000 steps) 3 min 46 s, 1.6604;
gpt (nanoGPT's 10.7M recipe, 1.4697 in ~3 min on an A100) is meant for <= 1.47 on a GPU.
"""
import math

import jax
import ml_collections
import numpy as np

from research import data, host_memory, xla_flags
from research.evals.lm import make_lm_evaluator
from research.models import fast
from research.models.sequence import make_char_model
from research.models.transformer import POSITIONS
from research.objectives.lm import init_lm_state, make_generate, make_lm_step
from research.objectives.optim import adamw, check_warmup
from research.objectives.state import count_params
from research.train import cli, loop
from research.train.outputs import Outputs, save_config

PRESETS = ('default', 'lstm', 'gpt', 'smoke')


def get_config(preset: str = 'default') -> ml_collections.ConfigDict:
    cli.check_preset('char_lm', preset, PRESETS)
    c = ml_collections.ConfigDict()
    c.preset, c.seed = preset, 0
    # seq_len: window = Transformer context. holdout=N: the last N characters of the training
    # part are held out to choose a recipe on, and validation (the reported split) is not read.
    c.data = dict(path='', seq_len=64, source='auto', holdout=0)
    c.model = dict(kind='transformer', layers=4, heads=4, width=128, dropout=0.0,
                   positions='learned', tie_weights=True, embed=64, hidden=256, unroll=1,
                   kernels='auto')  # kernels: the LSTM/GRU's (research/models/fast)
    c.optim = dict(lr=2e-3, weight_decay=0.1, warmup_steps=100, b2=0.99, clip=1.0)
    c.train = dict(batch_size=16, steps=1800, log_every=100, checkpoint_every=600,
                   eval_every=600, steps_per_dispatch=1)
    c.sample = dict(every=900, length=400, temperature=0.8, top_k=0, prompt='\n', seed=0)
    c.eval = dict(batch_size=64)
    if preset == 'lstm':
        c.data.seq_len = 128
        c.model.update(kind='lstm', layers=2)
        c.optim.lr = 3e-3
        c.train.update(batch_size=32, steps=1000)
    if preset == 'gpt':
        c.data.seq_len = 256
        c.model.update(layers=6, heads=6, width=384, dropout=0.2)
        c.optim.update(lr=1e-3, warmup_steps=100)
        c.train.update(batch_size=64, steps=5000, eval_every=1000, checkpoint_every=1000)
        c.sample.every = 1000
    if preset == 'smoke':  # seconds, for tests
        c.data.seq_len = 16
        c.model.update(layers=1, heads=2, width=16, hidden=16, embed=8)
        c.optim.warmup_steps = 1
        c.train.update(batch_size=8, steps=4, log_every=2, checkpoint_every=2, eval_every=2)
        c.sample.update(every=2, length=20)
        c.eval.batch_size = 16
    return cli.run_options(c)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Rejects bad choices before anything is loaded, built or written."""
    m, s = config.model, config.sample
    for what, value, known in (('model.kind', m.kind, ('transformer', 'lstm', 'gru')),
                               ('model.positions', m.positions, POSITIONS)):
        if value not in known:
            raise ValueError(f'unknown {what} {value!r}; known: {", ".join(known)}')
    if m.kind == 'transformer' and m.width % m.heads:
        raise ValueError(f'model.width {m.width} must be a multiple of model.heads {m.heads}')
    if not 0 <= m.dropout < 1:
        raise ValueError(f'model.dropout must be in [0, 1), got {m.dropout}')
    if s.temperature <= 0 or s.top_k < 0:
        raise ValueError(f'need sample.temperature > 0 and sample.top_k >= 0, got {s.temperature} '
                         f'and {s.top_k}')
    fast.check_kernels(m.kernels)
    if config.data.holdout < 0:
        raise ValueError(f'data.holdout must be >= 0 characters, got {config.data.holdout}')
    check_warmup(config.optim.warmup_steps, config.train.steps)


def splits(tokens: np.ndarray, holdout: int, seq_len: int):
    """(train, evaluation split, its name): the first 90% and the last 10% ('val'), or with
    `holdout` the 90% less its last `holdout` characters, and those ('holdout')."""
    train, validation = data.split_tokens(tokens)
    if not holdout:
        return train, validation, 'val'
    if holdout > len(train) - 2 * (seq_len + 1):
        raise ValueError(f'data.holdout={holdout} leaves too little to train on: the training '
                         f'part has {len(train):,} characters')
    return train[:-holdout], train[-holdout:], 'holdout'


def build(config: ml_collections.ConfigDict, vocab_size: int):
    """(model, init(key) -> state, step): what this config trains (benchmarks use it too)."""
    m, o, seq_len = config.model, config.optim, config.data.seq_len
    model = make_char_model(m.kind, vocab_size, embed=m.embed, hidden=m.hidden, layers=m.layers,
                            heads=m.heads, width=m.width, context=seq_len, dropout=m.dropout,
                            positions=m.positions, tie_weights=m.tie_weights, unroll=m.unroll,
                            fast=fast.use_fast(m.kernels))
    tx = adamw(o.lr, config.train.steps, warmup_steps=o.warmup_steps, final_lr=o.lr / 10,
               b2=o.b2, weight_decay=o.weight_decay, decay='matrices', clip=o.clip)
    return model, lambda key: init_lm_state(key, model, tx, seq_len), make_lm_step(model, tx)


def compiler_options(config: ml_collections.ConfigDict) -> dict:
    """XLA options for the train step: the Transformer's without YNNPACK where that was measured
    faster (research.xla_flags.without_ynnpack); the LSTM's and GRU's as jaxlib has them."""
    return xla_flags.without_ynnpack() if config.model.kind == 'transformer' else {}


def run(config: ml_collections.ConfigDict, workdir: str):
    check_config(config)
    text, source = data.load_corpus(config.data.path, config.data.source)  # nothing written yet
    vocab, s, out = data.Vocab.from_text(text), config.sample, Outputs(workdir)
    train, validation, split = splits(vocab.encode(text), config.data.holdout,
                                      config.data.seq_len)
    if any(c not in vocab.chars for c in s.prompt):
        raise ValueError(f'sample.prompt {s.prompt!r} has characters outside the corpus vocabulary')
    record, saved = data.vocab_record(vocab, text, source), out.existing_json('vocab.json')
    if saved is None:
        out.json('vocab.json', record)
    else:  # before config.json: a refused resume leaves the workdir as it was
        data.check_vocab(saved, record, out.path('vocab.json'))
    save_config(config, workdir)
    model, init, step = build(config, len(vocab))
    n = count_params(jax.eval_shape(init, jax.random.PRNGKey(0)).params)  # shapes only
    out.print(f'{config.model.kind}: {n:,} parameters; corpus {source}: {len(train):,} train / '
              f'{len(validation):,} {"validation" if split == "val" else "held-out"} chars, '
              f'{len(vocab)} symbols')
    evaluate = make_lm_evaluator(model, config.data.seq_len, config.eval.batch_size)
    generate = make_generate(model, config.data.seq_len, s.length, top_k=s.top_k)
    prompt = vocab.encode(s.prompt or '\n')[None]

    def validate(step, state, out):  # over the whole split
        result = evaluate(state.params, validation)
        return {f'{split}/loss': result['loss'], f'{split}/bits_per_char': result['bits_per_char']}

    def sample(step, state, out):
        tokens = generate(state.params, prompt, jax.random.PRNGKey(s.seed), s.temperature)
        sample_text = vocab.decode(np.asarray(tokens)[0])
        out.print(f'--- sample at step {step} (temperature {s.temperature}, top_k {s.top_k}) '
                  f'---\n{sample_text}\n---')
        out.text(f'samples/step_{step:06d}.txt', sample_text)

    def final(step, state, out):
        sample(step, state, out)
        r = validate(step, state, out)
        name = 'validation' if split == 'val' else 'held out of training'
        out.print(f'final ({name}, {len(validation) - 1} chars, step {step}): loss '
                  f'{r[f"{split}/loss"]:.4f} nats/char = {r[f"{split}/bits_per_char"]:.4f} '
                  'bits/char (a '
                  f'uniform guess: {math.log(len(vocab)):.3f} nats/char)')
        return r

    loop.train(config.train, workdir=workdir, seed=config.seed, **loop.options(config),
               init=init, step=step,
               pipeline=data.WindowPipeline(train, config.data.seq_len,
                                            config.train.batch_size, config.seed),
               hooks=[loop.Every(config.train.eval_every, validate), loop.Every(s.every, sample)],
               final=[final], outputs=out, compiler_options=compiler_options(config))
    out.print(f'done: samples/, metrics and checkpoints in {out.path()}')


if __name__ == '__main__':  # flags only when run, not when loaded as a config file
    host_memory.one_arena()  # its steps' temporaries pass 64 MiB: see research/host_memory.py
    cli.main(__file__, 'char_lm', run, check_config)
