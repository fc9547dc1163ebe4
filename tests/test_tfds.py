"""The tensorflow-datasets source, really run: tfds.load through `load(..., source='tfds')` and
`load_corpus(source='tfds')`, under tfds.testing.mock_data (random examples of each dataset's real
features, no download). Needs TensorFlow, which the main install leaves out: it runs with
`.ci/tfds` (a virtual environment with `.[test,tf]`) and skips elsewhere."""
import numpy as np
import pytest

pytest.importorskip('tensorflow')
import tensorflow_datasets as tfds  # noqa: E402

from research import data  # noqa: E402
from research.data import text  # noqa: E402


@pytest.fixture
def prepared(monkeypatch, tmp_path):
    """$TFDS_DATA_DIR holding what the probe takes for prepared datasets, so it says yes without
    the network, as on a machine where `tfds build` has run."""
    monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
    for name in ('mnist', 'cifar10', 'tiny_shakespeare'):
        (tmp_path / name / '1.0.0').mkdir(parents=True)
        (tmp_path / name / '1.0.0' / 'dataset_info.json').write_text('{}')
    for name in data.DATASETS:
        monkeypatch.delenv(data.DATASETS[name].env_var, raising=False)
    return tmp_path


@pytest.mark.parametrize('name, shape', [('mnist', (28, 28, 1)), ('cifar10', (32, 32, 3))])
def test_tfds_serves_an_image_split(prepared, name, shape):
    assert data.tfds_usable(name) == (True, f'already prepared in {prepared}')
    with tfds.testing.mock_data(num_examples=7):
        split = data.load(name, 'test', source='tfds')
    assert split.kind == 'tfds' and split.source.startswith('tensorflow-datasets (already')
    assert split.images.shape == (7, *shape) and split.images.dtype == np.uint8
    assert split.labels.dtype == np.int32 and set(split.labels) <= set(range(10))
    assert data.loaded()[-1] == {'dataset': name, 'split': 'test', 'source': 'tfds',
                                 'where': split.source, 'examples': 7}


def test_auto_asks_tfds_after_an_offline_download(prepared):
    with tfds.testing.mock_data(num_examples=5):
        assert data.load('mnist', 'test').kind == 'tfds'  # conftest's mirror refuses


def test_tfds_serves_the_text_corpus(prepared):
    with tfds.testing.mock_data(num_examples=3):
        corpus, source = text.load_corpus('', 'tfds')
    assert isinstance(corpus, str) and corpus
    assert source.startswith('tensorflow-datasets tiny_shakespeare (already prepared')
