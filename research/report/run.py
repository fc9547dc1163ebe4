"""What a report says about a run: its workdir read back (`load_run`) and the rows and series
the page and the Markdown summary both show.

A report reads only what the run wrote: config.json, metrics.jsonl, run_info.json (absent in
runs older than it: the hardware is then "not recorded"), samples/*.png, and other PNG and JSON
results (a confusion matrix, classification.json). Wall time is summed over the run's starts, each from
the loop's start (compilation included) to its last metrics record: a resume drops the records
after its checkpoint, so steps it redid count once; loading data before the loop and end hooks
that log nothing (the GAN's sample export) are not counted.
"""
import dataclasses
import json
import os
import re
import shlex
import statistics

from research.errors import InputError
from research.train.metrics import format_duration
from research.train.run_info import FILENAME as RUN_INFO, read_run_info

TIMELINE_LENGTH = 8  # sample grids shown per series: evenly spaced, the first and last included
_SERIES_PNG = re.compile(r'^(?P<prefix>.*?)step_(?P<step>\d+)\.png$')
_OWN_FILES = ('config.json', RUN_INFO)


@dataclasses.dataclass
class Run:
    workdir: str
    name: str
    config: dict | None
    records: list[dict]                         # metrics.jsonl, in file order
    starts: list[dict] | None                   # run_info.json; None for runs older than it
    timelines: dict[str, list[tuple[int, str]]]  # series name -> [(step, png path)], by step
    images: list[str]                           # other PNGs: interpolation, manifold, confusion
    results: dict[str, object]                  # other JSON files of the workdir, by file name


def _read_json(path: str):
    with open(path, encoding='utf-8') as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise InputError(f'{path}, line {e.lineno}: not valid JSON ({e.msg})') from None


def read_metrics(path: str) -> list[dict]:
    """The records of a metrics.jsonl; a bad line is an error naming the file and the line."""
    if not os.path.exists(path):
        raise FileNotFoundError(f'{path} does not exist: the report needs the metrics a run '
                                'writes (is this a run directory, and has it logged a step?)')
    records = []
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f'{path}, line {number}: not valid JSON ({e.msg})') from None
            if not isinstance(record, dict) or not {'step', 'time'} <= record.keys():
                raise InputError(f'{path}, line {number}: a record is a JSON object with "step" '
                                 f'and "time", got {line.strip()[:80]!r}')
            records.append(record)
    if not records:
        raise InputError(f'{path} has no records yet: nothing to report')
    return records


def read_results(workdir: str) -> dict[str, object]:
    """The workdir's own JSON results (results.json, classification.json...), by file name:
    every *.json but config.json and run_info.json; a bad one is named."""
    return {n: _read_json(os.path.join(workdir, n)) for n in sorted(os.listdir(workdir))
            if n.endswith('.json') and n not in _OWN_FILES}


def load_run(workdir: str) -> Run:
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f'workdir {workdir} does not exist or is not a directory')
    records = read_metrics(os.path.join(workdir, 'metrics.jsonl'))
    config_path = os.path.join(workdir, 'config.json')
    config = _read_json(config_path) if os.path.exists(config_path) else None
    starts = read_run_info(workdir)
    timelines, images = {}, []
    samples = os.path.join(workdir, 'samples')
    for name in sorted(os.listdir(samples)) if os.path.isdir(samples) else []:
        match = _SERIES_PNG.match(name)
        if match:
            series = match['prefix'].rstrip('_') or 'samples'
            timelines.setdefault(series, []).append((int(match['step']),
                                                     os.path.join(samples, name)))
        elif name.endswith('.png'):
            images.append(os.path.join(samples, name))
    images += [os.path.join(workdir, n) for n in sorted(os.listdir(workdir)) if n.endswith('.png')]
    results = read_results(workdir)
    return Run(workdir=workdir, name=_run_name(workdir, config, starts), config=config,
               records=records, starts=starts,
               timelines={k: sorted(v) for k, v in timelines.items()}, images=images,
               results=results)


def _run_name(workdir: str, config: dict | None, starts: list[dict] | None) -> str:
    """The workdir's name, plus the experiment module and preset when the run recorded them."""
    name = os.path.basename(os.path.normpath(os.path.abspath(workdir)))
    argv0 = (starts[0].get('argv') or [''])[0] if starts else ''
    module = os.path.splitext(os.path.basename(argv0))[0]
    if module == '__main__':  # `python -m package`: the package names what ran
        module = os.path.basename(os.path.dirname(argv0))
    parts = [module] if argv0.endswith('.py') else []
    if isinstance(config, dict) and 'preset' in config:
        parts.append(f'preset {config["preset"]}')
    return f'{name} ({", ".join(parts)})' if parts else name


def split_series(records: list[dict]) -> tuple[dict, dict]:
    """({train key: [(step, value)]}, {evaluation key: [...]}); evaluation keys hold a '/'."""
    train, evaluation = {}, {}
    for record in records:
        for key, value in record.items():
            if key in ('step', 'time') or not isinstance(value, (int, float)):
                continue
            (evaluation if '/' in key else train).setdefault(key, []).append(
                (record['step'], value))
    return dict(sorted(train.items())), dict(sorted(evaluation.items()))


def wall_time(records: list[dict], starts: list[dict] | None) -> tuple[float, str]:
    """Seconds of the run and how they were counted (see the module docstring)."""
    times = sorted(r['time'] for r in records)
    if not starts:
        return times[-1] - times[0], ('first to last metrics record, the time before the first '
                                      'not counted: no run_info.json')
    begins = sorted(s['time'] for s in starts)
    before = [t for t in times if t < begins[0]]  # records of starts from before run_info
    total = before[-1] - before[0] if before else 0.0
    for begin, end in zip(begins, begins[1:] + [float('inf')]):
        inside = [t for t in times if begin <= t < end]
        total += inside[-1] - begin if inside else 0.0
    return total, (f'{len(begins)} start(s), each to its last metrics record'
                   + (' (plus the records from before run_info.json)' if before else ''))


def fmt(value) -> str:
    if isinstance(value, float):
        return f'{value:.5g}' if abs(value) < 1e4 else f'{value:,.0f}'
    return f'{value:,}' if isinstance(value, int) else str(value)


def summary_rows(run: Run) -> list[tuple[str, str]]:
    seconds, how = wall_time(run.records, run.starts)
    rows = [('final step', fmt(max(r['step'] for r in run.records))),
            ('wall time', f'{format_duration(seconds)} ({how})')]
    speeds = [r['examples_per_s'] for r in run.records if 'examples_per_s' in r]
    if speeds:
        rows.append(('examples/s', f'{statistics.median(speeds):,.0f} (median over '
                                   f'{len(speeds)} logging windows; last {speeds[-1]:,.0f})'))
    if run.starts:
        rows.append(('starts', str(len(run.starts))))
        rows.extend(data_rows(run.starts[-1].get('data') or []))
    return rows


def data_rows(used: list[dict]) -> list[tuple[str, str]]:
    """One row per dataset the latest start used: how much of it, from which source."""
    rows = []
    for entry in used:
        name = entry['dataset'] + (f'/{entry["split"]}' if entry.get('split') else '')
        unit = 'examples' if 'examples' in entry else 'characters'
        rows.append((f'data {name}', f'{entry.get(unit, 0):,} {unit} from {entry["source"]}: '
                                     f'{entry["where"]}'))
    return rows


def final_rows(series: dict) -> list[tuple[str, str, str]]:
    """(metric, step, last value) per series, `x_sem` folded into `x` as `+- sem`."""
    rows = []
    for key, points in series.items():
        sem = series.get(key + '_sem')
        if key.endswith('_sem') and key[:-4] in series:
            continue
        step, value = points[-1]
        text = fmt(value)
        if sem and sem[-1][0] == step:
            text += f' +- {fmt(sem[-1][1])}'
        rows.append((key, fmt(step), text))
    return rows


def devices(start: dict) -> str:
    kinds = start.get('device_kinds') or {}
    text = ', '.join(f'{n} x {kind}' for kind, n in kinds.items())
    return f'{text} ({start.get("backend")}, {start.get("process_count")} process(es))'


def hardware_rows(starts: list[dict] | None) -> list[tuple[str, str]] | None:
    """Key facts of the latest start; None when the run predates run_info.json."""
    if not starts:
        return None
    s = starts[-1]
    versions = s.get('versions') or {}
    return [('host', str(s.get('hostname'))), ('devices', devices(s)),
            ('CPU', f'{s.get("cpu_model")}, {s.get("cpu_count")} logical CPUs '
                    f'({s.get("cpus_usable")} usable by the run)'),
            ('memory', f'{s.get("memory_gib")} GiB'),
            ('platform', f'{s.get("platform")}, Python {s.get("python")}'),
            ('versions', ', '.join(f'{k} {v}' for k, v in versions.items())),
            ('git commit', str(s.get('git_commit'))),
            ('command', shlex.join(s.get('argv') or []))]


def pick_evenly(items: list, n: int = TIMELINE_LENGTH) -> list:
    """Up to n items evenly spaced over the list, the first and the last included."""
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]
