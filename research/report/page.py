"""The HTML page of a run report: matplotlib curves and sample grids inlined as data URIs.

One file, no scripts, no external URL: it must render the same offline, attached to an issue or
years later. Every piece of text from the workdir goes through html.escape (a config value is
data, not markup). Figures are drawn on matplotlib's Agg canvas through `Figure` directly, not
pyplot, so drawing a report changes no global state of a process that also trains or plots.
"""
import base64
import html
import io
import json
import math
import os
import time

import numpy as np
from matplotlib.figure import Figure

from research.report import run as report  # the rows and series the page shows

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; color: #222; max-width: 1160px;
       margin: 24px auto; padding: 0 16px; }
h1 { font-size: 24px; margin-bottom: 4px; }
h2 { font-size: 19px; border-bottom: 1px solid #ddd; padding-bottom: 3px; margin-top: 32px; }
h3 { font-size: 16px; margin: 18px 0 6px; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { border: 1px solid #ddd; padding: 3px 10px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: #777; }
img.curves { max-width: 100%; }
.strip { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; text-align: center; font-size: 13px; color: #555; }
figure img { border: 1px solid #ccc; display: block; }
.strip img { width: 242px; }  /* half of a 2x-enlarged 64-image grid: one image pixel each */
.strip.other img { width: auto; max-width: 600px; }
pre { background: #f6f6f6; border: 1px solid #ddd; padding: 8px; overflow-x: auto;
      font-size: 12.5px; }
"""
PANEL_INCHES = (3.7, 2.3)  # one small multiple; three in a row fill the 1160 px page at 100 dpi
COLUMNS = 3


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def data_uri(png: bytes) -> str:
    return 'data:image/png;base64,' + base64.b64encode(png).decode('ascii')


def img(png: bytes, alt: str, css_class: str = '') -> str:
    cls = f' class="{esc(css_class)}"' if css_class else ''
    return f'<img{cls} src="{data_uri(png)}" alt="{esc(alt)}">'


def _limits_without_first(values: np.ndarray, err: np.ndarray) -> tuple[float, float] | None:
    """y-limits leaving out the first point when it would flatten the rest of the curve.

    The first logging window averages over the steps right after initialization; its loss can be
    far off the scale of everything after it, which then reads as a flat line. A short series
    keeps all its points: there the first one is a large part of what there is to see.
    """
    if len(values) < 10:
        return None
    low, high = float(np.min(values[1:] - err[1:])), float(np.max(values[1:] + err[1:]))
    span = high - low
    if span == 0 or low - span <= values[0] <= high + span:
        return None
    return low - 0.08 * span, high + 0.08 * span


def curves_png(series: dict) -> tuple[bytes | None, dict]:
    """Small multiples of every series with >= 2 distinct points; returns (png, constants).

    A constant series (beta = 1 without warm-up) is not drawn but returned, to be said in words;
    `x_sem` is drawn as a +-1 s.e. band around `x`; one-point series stay in the final table.
    """
    constants, drawn = {}, []
    for key, points in series.items():
        values = np.array([v for _, v in points], float)
        if key.endswith('_sem') and key[:-4] in series or len(points) < 2:
            continue
        if np.all(values == values[0]):
            constants[key] = float(values[0])
        else:
            drawn.append(key)
    if not drawn:
        return None, constants
    columns = min(COLUMNS, len(drawn))
    rows = math.ceil(len(drawn) / columns)
    fig = Figure(figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows), dpi=100,
                 layout='constrained')
    for i, key in enumerate(drawn):
        ax = fig.add_subplot(rows, columns, i + 1)
        steps, values = (np.array(a, float) for a in zip(*series[key]))
        ax.plot(steps, values, color='C0', lw=1.4, marker='o' if len(steps) <= 25 else None,
                ms=3)
        sem = dict(series.get(key + '_sem', []))
        err = np.array([sem.get(s, 0.0) for s in steps])
        if sem:
            ax.fill_between(steps, values - err, values + err, color='C0', alpha=0.2, lw=0)
        title = key + (' (band: +-1 s.e.)' if sem else '')
        limits = _limits_without_first(values, err)
        if limits:
            ax.set_ylim(*limits)
            title += f'\nstep {steps[0]:,.0f} off the scale: {report.fmt(float(values[0]))}'
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=8)
        ax.ticklabel_format(axis='x', style='plain')
        ax.grid(alpha=0.3)
        if i >= len(drawn) - columns:
            ax.set_xlabel('step', fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png')
    return buffer.getvalue(), constants


def _read(path: str) -> bytes:
    with open(path, 'rb') as f:
        return f.read()


def _table(rows, header=None, numeric=()) -> str:
    head = ''.join(f'<th>{esc(h)}</th>' for h in header) if header else ''
    body = ''.join('<tr>' + ''.join(
        f'<td class="num">{esc(c)}</td>' if j in numeric else f'<td>{esc(c)}</td>'
        for j, c in enumerate(row)) + '</tr>' for row in rows)
    return f'<table>{f"<tr>{head}</tr>" if head else ""}{body}</table>'


def _curves_section(title: str, series: dict) -> str:
    png, constants = curves_png(series)
    parts = [f'<h3>{esc(title)}</h3>']
    parts.append(img(png, title, 'curves') if png else
                 '<p class="muted">nothing with two or more distinct points to draw</p>')
    if constants:
        parts.append('<p class="muted">constant, not drawn: ' + ', '.join(
            f'{esc(k)} = {esc(report.fmt(v))}' for k, v in constants.items()) + '</p>')
    return '\n'.join(parts)


def _figure(path: str, caption: str) -> str:
    return (f'<figure>{img(_read(path), caption)}<figcaption>{esc(caption)}</figcaption>'
            '</figure>')


def _samples_section(run: report.Run) -> str:
    parts = ['<h2>Sample timeline</h2>']
    if not run.timelines:
        parts.append('<p class="muted">no samples/*step_*.png in this workdir</p>')
    for series, items in run.timelines.items():
        shown = report.pick_evenly(items)
        note = f', {len(shown)} of {len(items)} evenly spaced' if len(shown) < len(items) else ''
        parts.append(f'<h3>{esc(series)} <span class="muted">({len(items)} grids{note})</span>'
                     '</h3>')
        parts.append('<div class="strip">' + ''.join(
            _figure(path, f'step {step:,}') for step, path in shown) + '</div>')
    if run.images:
        parts.append('<h2>Other images</h2><div class="strip other">' + ''.join(
            _figure(p, os.path.relpath(p, run.workdir)) for p in run.images) + '</div>')
    return '\n'.join(parts)


def render(run: report.Run) -> str:
    """The whole page as one string."""
    train, evaluation = report.split_series(run.records)
    hardware = report.hardware_rows(run.starts)
    parts = [f'<h1>{esc(run.name)}</h1>',
             f'<p class="muted">{esc(os.path.abspath(run.workdir))}</p>',
             '<h2>Summary</h2>', _table(report.summary_rows(run)),
             '<h2>Final metrics</h2>']
    for title, series in (('evaluation', evaluation),
                          ('training (mean over the last logging window)', train)):
        if series:
            parts += [f'<h3>{esc(title)}</h3>',
                      _table(report.final_rows(series), ('metric', 'step', 'value'), (1, 2))]
    parts.append('<h2>Hardware</h2>')
    if hardware:
        parts.append(_table(hardware))
        if len(run.starts) > 1:
            rows = [(s.get('time_utc'), report.fmt(s.get('step')), s.get('hostname'),
                     report.devices(s), str(s.get('git_commit'))[:12]) for s in run.starts]
            parts += ['<h3>starts</h3>', _table(rows,
                                                 ('time (UTC)', 'from step', 'host', 'devices',
                                                  'commit'), (1,))]
    else:
        parts.append(f'<p>not recorded <span class="muted">({esc(report.RUN_INFO)} is absent: '
                     'the run predates it)</span></p>')
    parts.append('<h2>Curves</h2>')
    if train:
        parts.append(_curves_section('training', train))
    if evaluation:
        parts.append(_curves_section('evaluation', evaluation))
    parts.append(_samples_section(run))
    for name, result in run.results.items():
        parts += [f'<h2>{esc(name)}</h2>', f'<pre>{esc(json.dumps(result, indent=2))}</pre>']
    config = (json.dumps(run.config, indent=2) if run.config is not None
              else 'config.json is absent')
    parts += ['<h2>Config</h2>', f'<pre>{esc(config)}</pre>',
              f'<footer><p class="muted">generated {esc(time.strftime("%Y-%m-%d %H:%M:%S %Z"))}'
              ' by python -m research.report</p></footer>']
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<title>{esc(run.name)}: run report</title>\n<style>{CSS}</style>\n</head>\n'
            '<body>\n' + '\n'.join(parts) + '\n</body>\n</html>\n')
