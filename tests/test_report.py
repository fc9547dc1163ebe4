"""The run report: run_info.json, and a self-contained HTML page plus Markdown from a workdir."""
import base64
import html.parser
import io
import json
import os
import re
import shutil
import subprocess
import time

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import random_images
from research import data, report
from research.report.run import TIMELINE_LENGTH, pick_evenly, wall_time
from research.data import BatchPipeline
from research.train import mesh as mesh_lib
from research.train.images import image_grid, save_png
from research.train.loop import Every, train
from research.train.run_info import read_run_info, write_run_info

GRID_STEPS = list(range(10, 110, 10))  # ten sample grids: more than the page shows
EVIL = '<script>alert("x")</script>'


class Page(html.parser.HTMLParser):
    """Every <img> and whether each element emitted is closed in order."""
    VOID = {'img', 'meta', 'br', 'hr', 'link'}

    def __init__(self, text):
        super().__init__()
        self.open, self.images, self.errors = [], [], []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag == 'img':
            self.images.append(dict(attrs))
        elif tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if not self.open or self.open[-1] != tag:
            self.errors.append(f'</{tag}> closes {self.open[-1:]} at {self.getpos()}')
        else:
            self.open.pop()


def make_workdir(root, run_info=True):
    """A finished run as the experiments leave it: config, metrics, grids, run_info."""
    workdir = os.path.join(root, 'fake_run')
    os.makedirs(os.path.join(workdir, 'samples'))
    with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
        json.dump({'preset': 'smoke', 'note': EVIL, 'train': {'steps': 100}}, f)
    if run_info:
        data.record({'dataset': 'mnist', 'split': 'train', 'source': 'embedded',
                     'where': 'the embedded sample', 'examples': 5000})
        write_run_info(workdir, step=0)
    t0 = time.time()
    with open(os.path.join(workdir, 'metrics.jsonl'), 'w', encoding='utf-8') as f:
        for step in range(10, 110, 10):
            f.write(json.dumps({'step': step, 'time': t0 + step / 10, 'g_loss': 1 / step,
                                'd_loss': 1.3 + np.sin(step), 'beta': 1.0,
                                'examples_per_s': 100.0 + step}) + '\n')
            if step % 50 == 0:
                f.write(json.dumps({'step': step, 'time': t0 + step / 10 + 0.5,
                                    'heldout/elbo': -100.0 - 100 / step,
                                    'heldout/elbo_sem': 0.5, 'scores/fid': 300.0 / step}) + '\n')
    rng = np.random.default_rng(0)
    for step in GRID_STEPS:
        grid = image_grid(rng.integers(0, 256, (4, 28, 28, 1), dtype=np.uint8))
        save_png(os.path.join(workdir, 'samples', f'step_{step:06d}.png'), grid)
    save_png(os.path.join(workdir, 'samples', 'interpolation.png'),
             rng.integers(0, 256, (30, 60, 1), dtype=np.uint8))
    return workdir


@pytest.fixture
def workdir(tmp_path):
    return make_workdir(str(tmp_path))


def decoded(image):
    src = image['src']
    assert src.startswith('data:image/png;base64,'), src[:40]
    return base64.b64decode(src.split(',', 1)[1])


def test_run_info_records_every_start(tmp_path):
    first = write_run_info(str(tmp_path), step=0)
    write_run_info(str(tmp_path), step=40)
    starts = read_run_info(str(tmp_path))
    assert [s['step'] for s in starts] == [0, 40] and starts[0] == first
    assert {'time', 'time_utc', 'argv', 'hostname', 'platform', 'python', 'versions', 'backend',
            'device_kinds', 'device_count', 'process_count', 'cpu_model', 'cpu_count',
            'git_commit', 'git_dirty'} <= first.keys()
    assert first['versions']['jax'] and first['device_count'] == sum(
        first['device_kinds'].values())


def test_report_is_one_self_contained_page(workdir):
    html_path, md_path = report.write_report(workdir)
    assert html_path == os.path.join(workdir, 'report.html')
    with open(html_path, encoding='utf-8') as f:
        page = f.read()
    parsed = Page(page)
    assert not parsed.errors and not parsed.open, (parsed.errors, parsed.open)
    assert not re.search(r'https?://', page) and '<script' not in page
    assert '&lt;script&gt;alert(\\&quot;x\\&quot;)&lt;/script&gt;' in page  # JSON, then HTML
    images = {image['alt']: decoded(image) for image in parsed.images}
    for curves in ('training', 'evaluation'):
        assert Image.open(io.BytesIO(images[curves])).format == 'PNG'
    shown = pick_evenly(GRID_STEPS)
    assert len(shown) == TIMELINE_LENGTH and shown[0] == 10 and shown[-1] == 100
    for step in GRID_STEPS:
        path = os.path.join(workdir, 'samples', f'step_{step:06d}.png')
        with open(path, 'rb') as f:
            assert (images.get(f'step {step:,}') == f.read()) == (step in shown), step
    assert 'samples/interpolation.png' in images
    assert 'constant, not drawn: beta = 1' in page
    assert 'not recorded' not in page and 'preset smoke)' in page


def test_smoke_run_records_its_starts_and_is_reported(mlp_gan, tmp_path):
    """The loop writes run_info.json on every (re)start; a real resumed run gets a report."""
    workdir = str(tmp_path / 'smoke')
    os.makedirs(os.path.join(workdir, 'samples'))

    def grid(step, state, out):
        out.png(f'samples/step_{step:06d}.png', image_grid(random_images(4, seed=step)), scale=1)

    common = dict(step=mlp_gan.step, hooks=[Every(2, grid)], final=[grid],
                  pipeline=BatchPipeline({'image': random_images(64)}, 16, seed=0),
                  mesh=mesh_lib.data_mesh(jax.devices()[:1]), init=lambda key: mlp_gan.state)
    train(dict(steps=2, log_every=2, checkpoint_every=2), workdir=workdir, **common)
    train(dict(steps=4, log_every=2, checkpoint_every=2), workdir=workdir, **common)
    assert [s['step'] for s in read_run_info(workdir)] == [0, 2]
    with open(report.write_report(workdir)[0], encoding='utf-8') as f:
        page = f.read()
    parsed = Page(page)
    assert not parsed.errors and not parsed.open
    assert {'training', 'step 2', 'step 4'} <= {image['alt'] for image in parsed.images}
    assert '2 start(s), each to its last metrics record' in page and 'from step' in page


def test_markdown_summary(workdir):
    _, md_path = report.write_report(workdir)
    with open(md_path, encoding='utf-8') as f:
        md = f.read()
    assert '| final step | 100 |' in md
    assert '| heldout/elbo | 100 | -101 +- 0.5 |' in md and '| scores/fid | 100 | 3 |' in md
    assert '](samples/step_000100.png)' in md and '](samples/interpolation.png)' in md
    assert '| host |' in md
    assert '| data mnist/train | 5,000 examples from embedded: the embedded sample |' in md


def test_out_elsewhere_links_back(workdir, tmp_path):
    out = os.path.join(str(tmp_path), 'elsewhere', 'r.html')
    _, md_path = report.write_report(workdir, out)
    assert md_path == os.path.join(str(tmp_path), 'elsewhere', 'r.md')
    with open(md_path, encoding='utf-8') as f:
        assert '](../fake_run/samples/step_000100.png)' in f.read()


def test_old_run_without_run_info(tmp_path):
    workdir = make_workdir(str(tmp_path), run_info=False)
    with open(report.write_report(workdir)[0], encoding='utf-8') as f:
        assert 'not recorded' in f.read()


def test_wall_time_sums_the_starts():
    records = [{'step': s, 'time': t} for s, t in [(1, 101), (2, 104), (3, 211), (4, 213)]]
    seconds, how = wall_time(records, [{'time': 100.0}, {'time': 210.0}])
    assert seconds == pytest.approx(4 + 3) and '2 start(s)' in how
    seconds, how = wall_time(records, None)
    assert seconds == pytest.approx(112) and 'no run_info.json' in how


def test_errors_name_the_file_and_line(workdir, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        report.write_report(os.path.join(str(tmp_path), 'nope'))
    path = os.path.join(workdir, 'metrics.jsonl')
    with open(path, encoding='utf-8') as f:
        lines = f.readlines()
    lines[2] = '{"step": 30, "time": 1.0, "g_loss": \n'
    with open(path, 'w', encoding='utf-8') as f:
        f.writelines(lines)
    with pytest.raises(ValueError, match=re.escape(f'{path}, line 3: not valid JSON')):
        report.write_report(workdir)
    os.remove(path)
    with pytest.raises(SystemExit) as e:
        report.main([workdir])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith(f'FATAL {path} does not exist')


@pytest.mark.skipif(not shutil.which('chromium'), reason='chromium is not installed')
def test_report_renders_in_headless_chromium(workdir, tmp_path):
    html_path, _ = report.write_report(workdir)
    shot = os.path.join(str(tmp_path), 'shot.png')
    subprocess.run(['chromium', '--headless', '--no-sandbox', '--disable-gpu',
                    f'--user-data-dir={tmp_path / "profile"}', f'--screenshot={shot}',
                    '--window-size=1200,2000', 'file://' + os.path.abspath(html_path)],
                   capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert('L'), np.float32)
    assert pixels.shape == (2000, 1200)
    assert pixels.std() > 20 and (pixels < 128).mean() > 0.01  # text, curves, grids: not blank
