r"""Character-level language models on tiny shakespeare: Transformer, LSTM or GRU.

    python -m experiments.char_lm                                      # default: small Transformer
    python -m experiments.char_lm --config=experiments/char_lm.py:lstm
    python -m experiments.char_lm --config=experiments/char_lm.py:lstm --config.model.kind=gru
    python -m experiments.char_lm --config=experiments/char_lm.py:gpt --workdir runs/char_gpt  # GPU
    python -m experiments.char_lm --config.data.path=my_corpus.txt    # any UTF-8 text

The corpus comes from data.path, else tfds tiny_shakespeare where it can work, else
../shared/data/tinyshakespeare/input.txt (research/data/text.py); first 90% train, last 10%
validate; vocab.json in the workdir pins the corpus for resumption. Training windows are random
(seed, step); the validation loss is over the WHOLE validation split (111,539 predicted
characters), every character once, in nats/char and bits/char. Every sample.every steps and at
the end, a sample (temperature, top-k; one jitted scan) is printed and saved in samples/.

Measured on this project's reference machine (2 CPU cores, jax 0.10.2), wall time of the whole
command including compilation and evaluations:
  default  Transformer (pre-norm, learned positions, tied embeddings, 0.81M parameters): 4
           layers, 4 heads, width 128, context 64, batch 16, no dropout, AdamW lr 2e-3 (100
           warm-up steps, cosine to 2e-4, weight decay 0.1, clip 1), 1,200 steps: 2 min 00 s
           on a quiet machine (3 min 43 s with the cores shared), validation 1.8225 nats/char =
           2.629 bits/char (2.153 after 400 steps, 1.927 after 800). The same recipe run to
           2,000 steps reaches 1.687 (8 min 12 s on the loaded machine).
  lstm     2-layer LSTM, hidden 256, embedding 64, context 128, batch 32, no dropout, AdamW lr
           3e-3, 1,000 steps (0.87M parameters): 3 min 46 s on a quiet machine, validation
           1.6604 nats/char = 2.395 bits/char (1.835 after 400 steps, 1.684 after 800).
For reference, nanoGPT's baby GPT CPU recipe (4 layers, 4 heads, width 128, context 64, batch 12,
2,000 iterations, ~70 ms/iteration here) scores 1.90 nats/char on the whole validation split.
gpt      nanoGPT's 10.7M-parameter recipe (6 layers, 6 heads, width 384, context 256, batch 64,
         dropout 0.2, lr 1e-3, 5,000 steps) meant to reach <= 1.47 nats/char (nanoGPT: 1.4697 in
         about 3 minutes on one A100). Not measured here: no GPU on the reference machine.
"""
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, logging

from research import data, files
from research.evals.lm import make_lm_evaluator
from research.models.sequence import make_char_model
from research.models.transformer import POSITIONS
from research.objectives.lm import init_lm_state, make_generate, make_lm_step
from research.objectives.optim import adamw
from research.train import loop, mesh as mesh_lib
from research.train.cli import define_flags, experiment_main, save_config

PRESETS = ('default', 'lstm', 'gpt', 'smoke')
KINDS = ('transformer', 'lstm', 'gru')


def get_config(preset: str = 'default') -> ml_collections.ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f'unknown preset {preset!r} for char_lm; presets: {", ".join(PRESETS)}')
    c = ml_collections.ConfigDict()
    c.preset, c.seed = preset, 0
    c.data = dict(path='', seq_len=64)  # seq_len: training window = Transformer context
    c.model = dict(kind='transformer', layers=4, heads=4, width=128, dropout=0.0,
                   positions='learned', tie_weights=True, embed=64, hidden=256, unroll=1)
    c.optim = dict(lr=2e-3, weight_decay=0.1, warmup_steps=100, b2=0.99, clip=1.0)
    c.train = dict(batch_size=16, steps=1200, log_every=100, checkpoint_every=400,
                   eval_every=400)
    c.sample = dict(every=600, length=400, temperature=0.8, top_k=0, prompt='\n', seed=0)
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
    return c


def check_config(config: ml_collections.ConfigDict) -> None:
    """Rejects bad choices before anything is loaded, built or written."""
    m = config.model
    if m.kind not in KINDS:
        raise ValueError(f'unknown model.kind {m.kind!r}; known: {", ".join(KINDS)}')
    if m.positions not in POSITIONS:
        raise ValueError(f'unknown model.positions {m.positions!r}; known: {", ".join(POSITIONS)}')
    if m.kind == 'transformer' and m.width % m.heads:
        raise ValueError(f'model.width {m.width} must be a multiple of model.heads {m.heads}')
    if not 0 <= m.dropout < 1:
        raise ValueError(f'model.dropout must be in [0, 1), got {m.dropout}')
    if config.sample.temperature <= 0 or config.sample.top_k < 0:
        raise ValueError(f'need sample.temperature > 0 and sample.top_k >= 0, got '
                         f'{config.sample.temperature} and {config.sample.top_k}')


def run(config: ml_collections.ConfigDict, workdir: str):
    check_config(config)
    text, source = data.load_corpus(config.data.path)  # before anything is written
    vocab = data.Vocab.from_text(text)
    if any(c not in vocab.chars for c in config.sample.prompt):
        raise ValueError(f'sample.prompt {config.sample.prompt!r} has characters outside the '
                         'corpus vocabulary')
    vocab_path, record = os.path.join(workdir, 'vocab.json'), data.vocab_record(vocab, text, source)
    if files.exists(vocab_path):  # before config.json: a refused resume leaves the workdir as is
        with files.open(vocab_path) as f:
            data.check_vocab(json.load(f), record, vocab_path)
    elif jax.process_index() == 0:
        files.makedirs(workdir)
        with files.open(vocab_path, 'w') as f:
            json.dump(record, f, indent=2)
    save_config(config, workdir)
    train, validation = data.split_tokens(vocab.encode(text))
    logging.info('corpus: %s, %d chars, %d symbols; train %d, validation %d', source, len(text),
                 len(vocab), len(train), len(validation))
    mesh = mesh_lib.data_mesh()
    seq_len, steps = config.data.seq_len, config.train.steps
    pipeline = data.WindowPipeline(train, seq_len, config.train.batch_size, config.seed)

    m, o = config.model, config.optim
    model = make_char_model(m.kind, len(vocab), embed=m.embed, hidden=m.hidden, layers=m.layers,
                            heads=m.heads, width=m.width, context=seq_len, dropout=m.dropout,
                            positions=m.positions, tie_weights=m.tie_weights, unroll=m.unroll)
    tx = adamw(o.lr, steps, warmup_steps=o.warmup_steps, final_lr=o.lr / 10, b2=o.b2,
               weight_decay=o.weight_decay, decay='matrices', clip=o.clip)
    state = jax.jit(lambda key: init_lm_state(key, model, tx, seq_len))(
        jax.random.PRNGKey(config.seed))
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    print(f'{m.kind}: {n_params:,} parameters; corpus {source}: {len(train):,} train / '
          f'{len(validation):,} validation chars, {len(vocab)} symbols', flush=True)
    evaluate = make_lm_evaluator(model, seq_len, config.eval.batch_size, mesh)
    s = config.sample
    generate = make_generate(model, seq_len, s.length, top_k=s.top_k)
    prompt = jnp.asarray(vocab.encode(s.prompt or '\n')[None])

    def validate(step, state):
        if step == steps:
            return None  # the final hook evaluates the last step
        result = evaluate(state.params, validation)
        return {'val/loss': result['loss'], 'val/bits_per_char': result['bits_per_char']}

    def sample(step, state):
        tokens = generate(state.params, prompt, jax.random.PRNGKey(s.seed), s.temperature)
        sample_text = vocab.decode(np.asarray(tokens)[0])
        print(f'--- sample at step {step} (temperature {s.temperature}, top_k {s.top_k}) ---\n'
              f'{sample_text}\n---', flush=True)
        if jax.process_index() == 0:
            files.makedirs(os.path.join(workdir, 'samples'))
            with files.open(os.path.join(workdir, 'samples', f'step_{step:06d}.txt'), 'w') as f:
                f.write(sample_text)

    def final(step, state):
        sample(step, state)
        result = evaluate(state.params, validation)
        print(f'final (validation, {result["chars"]} chars, step {step}): loss '
              f'{result["loss"]:.4f} nats/char = {result["bits_per_char"]:.4f} bits/char',
              flush=True)
        return {'val/loss': result['loss'], 'val/bits_per_char': result['bits_per_char']}

    loop.train(workdir=workdir, state=state, step_fn=make_lm_step(model, tx), pipeline=pipeline,
               mesh=mesh, num_steps=steps, log_every=config.train.log_every,
               checkpoint_every=config.train.checkpoint_every,
               hooks=(loop.Hook(config.train.eval_every, validate, at_end=False),
                      loop.Hook(s.every, lambda step, state: sample(step, state)
                                if step != steps else None, at_end=False),
                      loop.Hook(steps, final)))
    print(f'done: samples/, metrics and checkpoints in {files.absolute(workdir)} '
          f'(loss {math.log(len(vocab)):.3f} nats/char would be a uniform guess)', flush=True)


def run_or_exit(config, workdir):
    """`run` for the command line: no corpus, or another corpus than the workdir's, is a one-line
    message that says what to do, not a traceback."""
    try:
        run(config, workdir)
    except data.CorpusUnavailableError as e:
        sys.exit(f'FATAL {e}')
    except ValueError as e:
        if 'vocab.json' not in str(e):
            raise
        sys.exit(f'FATAL {e}')


if __name__ == '__main__':  # flags only when run, not when loaded as a config file
    define_flags(__file__, 'runs/char_lm[_PRESET]')
    app.run(experiment_main('char_lm', run_or_exit, check_config))
