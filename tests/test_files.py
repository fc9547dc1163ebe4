"""Workdir files through research.files: local paths as before, URLs (gs://) through
etils.epath, here with the bucket faked by a local directory; a bucket cannot append, so
metrics.jsonl is rewritten whole there, and a resumed run still drops the records it redoes."""
import json

import ml_collections
import numpy as np
from etils import epath

from research import files
from research.train import metrics, outputs, run_info
from research.train.images import save_png


class FakeTensorBoard:
    def __init__(self, *args, **kwargs):
        self.logdir = args[0]

    def add_scalar(self, *args):
        pass

    def close(self):
        pass


def test_local_and_url_paths(tmp_path, monkeypatch):
    bucket = tmp_path / 'bucket'
    monkeypatch.setattr(files, '_remote', lambda p: epath.Path(bucket / str(p)[len('gs://'):]))
    monkeypatch.setattr(metrics, 'SummaryWriter', FakeTensorBoard)
    workdir = 'gs://runs/one'
    assert files.is_url(workdir) and not files.is_url(tmp_path)
    assert files.absolute(workdir) == workdir

    outputs.save_config(ml_collections.ConfigDict({'lr': 0.1}), workdir)
    assert json.loads((bucket / 'runs/one/config.json').read_text()) == {'lr': 0.1}
    assert run_info.write_run_info(workdir, step=0)['step'] == 0
    assert len(run_info.read_run_info(workdir)) == 1
    files.makedirs(f'{workdir}/samples')  # as the experiments do (a no-op in a real bucket)
    save_png(f'{workdir}/samples/grid.png', np.zeros((4, 4, 1), np.uint8))
    assert (bucket / 'runs/one/samples/grid.png').read_bytes()[:4] == b'\x89PNG'

    writer = metrics.MetricWriter(workdir, enabled=True)
    assert writer._tb.logdir == 'gs://runs/one/tensorboard'
    for step in (1, 2, 3):
        writer.scalars(step, {'loss': float(step)})
    writer.close()
    resumed = metrics.MetricWriter(workdir, resume_step=2, enabled=True)  # step 3 is redone
    resumed.scalars(3, {'loss': 30.0})
    resumed.close()
    records = [json.loads(line) for line in (bucket / 'runs/one/metrics.jsonl').open()]
    assert [(r['step'], r['loss']) for r in records] == [(1, 1.0), (2, 2.0), (3, 30.0)]

    local = tmp_path / 'local'
    files.makedirs(local / 'a')
    with files.open(local / 'a' / 'x.txt', 'w') as f:
        f.write('é')
    assert files.exists(local / 'a' / 'x.txt') and (local / 'a' / 'x.txt').read_text() == 'é'
    files.replace(local / 'a' / 'x.txt', local / 'y.txt')
    assert (local / 'y.txt').exists() and not (local / 'a' / 'x.txt').exists()
