"""README's results tables, generated from one record per row (results/*.json), and a staleness
check against the code each row exercises.

    python -m research.report.results                  # rewrite README.md's tables from the records
    python -m research.report.results --check          # README disagrees or a row is stale: exit 1
    python -m research.report.results record runs/gan_mnist results/01_dcgan.json
                                                       # a record's run and metrics from its workdir

A record names its `table` (TABLES: 'results' by default, 'samples' or 'families') and holds
that table's cells as words (for 'results': `experiment`, `command`, `data`, `hardware`,
`wall_time` and `result`), whose `{name:format}` fields are filled from `metrics`: a key of metrics.jsonl, or
FILE.json/path/in/it for another JSON file of the workdir; `{wall}` is the run's wall time and
`{machine}` the CPU it ran on (run_info.json's cpu_model). It
names the `module` it runs, and holds `run`: the commit (and whether the tree was dirty), date,
machine and wall time the run's own files recorded (run_info.json, metrics.jsonl, results.json),
written by `record`, never typed in. A row is stale when a commit after `run.commit` changed a
file its module imports (transitively, inside this repository), when it ran with uncommitted
changes, or when it has no run record at all (`run.source` says where its numbers came from
instead). The judges table is not a run's: it is the pinned weights' own record
(research.evals.judge.JUDGES, whose accuracies the tests re-measure).
"""
import ast
import json
import os
import re
import subprocess
import sys
import time

from research import errors
from research.report.run import load_run, read_results, wall_time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
END = '<!-- end of table -->'


def _begin(table: str) -> str:
    return f'<!-- {table} table: python -m research.report.results -->'


# Each README table: its columns as (heading, the record's key for that cell). A record names
# its table (`table`, default 'results'); its rows go in file-name order.
TABLES = {
    'results': (('experiment', 'experiment'), ('command', 'command'), ('data', 'data'),
                ('hardware', 'hardware'), ('wall time', 'wall_time'), ('result', 'result')),
    'samples': (('what is scored (10,000 images unless said)', 'experiment'), ('FID', 'fid'),
                ('KID', 'kid'), ('classifier score', 'classifier_score')),
    'families': (('generator, default preset', 'experiment'), ('command', 'command'),
                 ('wall time', 'wall_time'), ('FID', 'fid'), ('KID', 'kid'),
                 ('classifier score', 'classifier_score'), ('likelihood', 'likelihood')),
}
JUDGES_TABLE = ('judge', 'recipe (fixed seed)',
                'trained on / tested on', 'test accuracy', 'weights (sha256)')
_JUDGE_NAMES = {'mnist': 'MNIST', 'fashion_mnist': 'Fashion-MNIST'}
BEGIN = _begin('results')
_RUN_KEYS = ('module', 'metrics', 'run')
_FIELD = re.compile(r'\{([^{}:]+)(?::([^{}]*))?\}')  # {name} or {name:format}


def fields(template: str) -> list[str]:
    return [m.group(1) for m in _FIELD.finditer(template)]


def fill(template: str, metrics: dict) -> str:
    return _FIELD.sub(lambda m: format(metrics[m.group(1)], m.group(2) or ''), template)


def read_records(directory: str) -> list[tuple[str, dict]]:
    """(path, record) for each results/*.json, in file-name order; a bad one is named."""
    if not os.path.isdir(directory):
        raise errors.InputError(f'{directory} does not exist: it holds one JSON record per row')
    records = []
    for name in sorted(n for n in os.listdir(directory) if n.endswith('.json')):
        path = os.path.join(directory, name)
        with open(path, encoding='utf-8') as f:
            try:
                record = json.load(f)
            except json.JSONDecodeError as e:
                raise errors.InputError(f'{path}, line {e.lineno}: not valid JSON ({e.msg})'
                                        ) from None
        table = record.setdefault('table', 'results')
        if table not in TABLES:
            raise errors.InputError(f'{path}: table {table!r} is not one of '
                                    f'{", ".join(TABLES)}')
        missing = [k for k in _keys(table) + _RUN_KEYS if k not in record]
        if missing:
            raise errors.InputError(f'{path}: missing {", ".join(missing)}')
        records.append((path, record))
    return records


def duration(seconds: float) -> str:
    """40 s, 7 min 51 s, 1 h 02 min: as the README writes wall times."""
    seconds = round(seconds)
    if seconds < 60:
        return f'{seconds} s'
    if seconds < 3600:
        return f'{seconds // 60} min {seconds % 60:02d} s'
    return f'{seconds // 3600} h {seconds % 3600 // 60:02d} min'


def _keys(table: str) -> tuple[str, ...]:
    return tuple(key for _, key in TABLES[table])


def machine_name(cpu_model: str) -> str:
    """'Intel(R) Xeon(R) Processor' -> 'Intel Xeon': the CPU as a table names it."""
    words = re.sub(r'\((R|TM)\)', '', cpu_model).split()
    return ' '.join(w for w in words if w not in ('Processor', 'CPU')) or cpu_model


def row(path: str, record: dict) -> str:
    """One Markdown table row, each cell filled from `metrics` (and {wall}, the run's wall
    time); a name that `metrics` lacks is named. A command is set as code."""
    values = dict(record['metrics'])
    if record['run'].get('wall_s') is not None:
        values['wall'] = duration(record['run']['wall_s'])
    if record['run'].get('machine'):
        values['machine'] = machine_name(record['run']['machine'])
    keys = _keys(record.get('table', 'results'))
    try:
        cells = [fill(record[k], values) for k in keys]
    except KeyError as e:
        raise errors.InputError(f'{path}: names {e.args[0]!r}, which its metrics lack') from None
    cells = [f'`{c}`' if k == 'command' else c for k, c in zip(keys, cells)]
    return '| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |'


def table(name: str, records: list[tuple[str, dict]]) -> str:
    """The table `name`, markers included, of the records that name it."""
    rows = [row(p, r) for p, r in records if r.get('table', 'results') == name]
    return _block(name, [heading for heading, _ in TABLES[name]], rows)


def _block(name: str, headings, rows: list[str]) -> str:
    """A table between its markers: the heading row, the rule, the rows."""
    head = ['| ' + ' | '.join(headings) + ' |', '|' + '---|' * len(headings)]
    return '\n'.join([_begin(name), *head, *rows, END])


def judges_table() -> str:
    """The pinned judges, from research.evals.judge.JUDGES."""
    from research.evals import judge  # imports jax and flax: only to write or check the README

    rows = [f'| {_JUDGE_NAMES.get(name, name)} | `{info["command"]}` | {info["trained_on"]} / '
            f'{info["tested_on"]} | {100 * info["test_accuracy"]:.2f}% | '
            f'`research/evals/judges/{name}.msgpack`, `{info["sha256"]}` |'
            for name, info in judge.JUDGES.items()]
    return _block('judges', JUDGES_TABLE, rows)


def rewrite(readme: str, records: list[tuple[str, dict]]) -> str:
    """README text with each table between its markers replaced; every table must be there
    once."""
    tables = {name: table(name, records) for name in TABLES}
    tables['judges'] = judges_table()
    for name, text in tables.items():
        begin = _begin(name)
        start = readme.find(begin)
        stop = readme.find(END, start)
        if start < 0 or stop < 0 or readme.count(begin) != 1:
            raise errors.InputError(f'README.md should hold one {begin} ... {END} block to '
                                    f'rewrite; it holds {readme.count(begin)}')
        readme = readme[:start] + text + readme[stop + len(END):]
    return readme


# Which code a row exercises.

def module_files(module: str, repo: str = REPO) -> list[str]:
    """Repository files that `module` (e.g. experiments.gan_mnist) imports, transitively."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        path = _file_of(name, repo)
        if path is None or path in seen:
            continue
        seen.add(path)
        with open(os.path.join(repo, path), encoding='utf-8') as f:
            tree = ast.parse(f.read(), path)
        package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ''
                if node.level:
                    parts = package.split('.')
                    base = '.'.join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                todo += [base] + [f'{base}.{a.name}' for a in node.names]
        parts = name.split('.')  # a submodule runs its packages' __init__ too
        todo += ['.'.join(parts[:i]) for i in range(1, len(parts))]
    return sorted(seen)


def _file_of(name: str, repo: str) -> str | None:
    base = name.replace('.', '/')
    for candidate in (base + '.py', base + '/__init__.py'):
        if os.path.isfile(os.path.join(repo, candidate)):
            return candidate
    return None


def _git(*args, repo: str = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(['git', '-C', repo, *args], capture_output=True, text=True,
                          timeout=30, check=False)


def staleness(record: dict, repo: str = REPO) -> str | None:
    """Why the row's numbers may no longer hold for this code, or None if they do."""
    run = record['run']
    if not run.get('commit'):
        return f'no run record ({run.get("source", "typed in")})'
    if run.get('dirty'):
        return f'measured with uncommitted changes to {run["commit"][:10]}'
    files = module_files(record['module'], repo)
    last = _git('log', '-1', '--format=%H', 'HEAD', '--', *files, repo=repo).stdout.strip()
    if not last:
        return None
    if _git('cat-file', '-e', run['commit'] + '^{commit}', repo=repo).returncode:
        return f'its commit {run["commit"][:10]} is not in this repository'
    if _git('merge-base', '--is-ancestor', last, run['commit'], repo=repo).returncode:
        changed = [path for path in _git('diff', '--name-only', run['commit'], last, '--',
                                         *files, repo=repo).stdout.split()
                   if _code(run['commit'], path, repo) != _code(last, path, repo)]
        if changed:
            return (f'measured at {run["commit"][:10]}; {last[:10]} changed code it runs: '
                    + ', '.join(changed[:4]) + (' ...' if len(changed) > 4 else ''))
    return None


def _code(commit: str, path: str, repo: str) -> str | None:
    """The Python file at `commit` as its syntax tree without docstrings or comments (so an
    edit to those alone leaves a row fresh), or None if it is absent there."""
    shown = _git('show', f'{commit}:{path}', repo=repo)
    if shown.returncode:
        return None
    try:
        tree = ast.parse(shown.stdout, path)
    except SyntaxError:
        return shown.stdout
    for node in ast.walk(tree):
        body = getattr(node, 'body', None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


# A record's run, from the run's own files.

def flatten(value, prefix: str = '') -> dict:
    """{'a': {'b': 1}, 'c': [{'d': 2}]} -> {'a/b': 1, 'c/0/d': 2}; numbers only."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return {prefix: value} if isinstance(value, (int, float)) else {}
    out = {}
    for key, item in items:
        out.update(flatten(item, f'{prefix}/{key}' if prefix else str(key)))
    return out


def run_metrics(workdir: str) -> tuple[dict, dict]:
    """(every metric's last value, keyed as in metrics.jsonl or as FILE.json/path/in/it; the
    run record: commit, date, machine, wall time) of a finished run's workdir. A workdir of
    phases (the DBN's rbm_1..L and finetune, each a run of its own) gives each phase's metrics
    as PHASE/key, its top-level JSON files as above, and the phases' wall times summed."""
    if not os.path.exists(os.path.join(workdir, 'metrics.jsonl')) and os.path.isdir(workdir):
        phases = [n for n in sorted(os.listdir(workdir))
                  if os.path.isfile(os.path.join(workdir, n, 'metrics.jsonl'))]
        if phases:
            return _phased_metrics(workdir, phases)
    run = load_run(workdir)
    return _metrics(run), _run_record([run])


def _metrics(run, prefix: str = '') -> dict:
    metrics = {}
    for record in run.records:
        metrics.update({prefix + k: v for k, v in record.items() if k not in ('step', 'time')})
    for name, content in run.results.items():
        metrics.update(flatten(content, prefix + name))
    return metrics


def _phased_metrics(workdir: str, phases: list[str]) -> tuple[dict, dict]:
    runs = [load_run(os.path.join(workdir, p)) for p in phases]
    runs.sort(key=lambda r: min(s['time'] for s in r.starts) if r.starts else 0)  # as they ran
    phases = [os.path.basename(r.workdir) for r in runs]
    commits = {(r.starts or [{}])[-1].get('git_commit') for r in runs}
    if len(commits) > 1:
        raise errors.InputError(f'{workdir}: its phases ran at different commits ('
                                f'{", ".join(sorted(str(c)[:10] for c in commits))}); rerun it '
                                'at one commit to record it')
    metrics = {}
    for phase, run in zip(phases, runs):
        metrics.update(_metrics(run, phase + '/'))
    for name, content in read_results(workdir).items():
        metrics.update(flatten(content, name))
    return metrics, _run_record(runs)


def _run_record(runs: list) -> dict:
    """Commit, dirty tree, date and machine of the first run's last start; wall time and steps
    summed over the runs (the phases of one experiment)."""
    first = (runs[0].starts or [{}])[-1]
    return dict(
        commit=first.get('git_commit'),
        dirty=any((r.starts or [{}])[-1].get('git_dirty') for r in runs),
        date=first.get('time_utc'), machine=first.get('cpu_model'),
        devices=first.get('device_kinds'),
        steps=sum(max(r['step'] for r in run.records) for run in runs),
        wall_s=round(sum(wall_time(run.records, run.starts)[0] for run in runs), 1),
        recorded=time.strftime('%Y-%m-%d'))


def record(workdir: str, path: str) -> dict:
    """Fills `metrics` and `run` of the record at `path` from `workdir`; returns it."""
    with open(path, encoding='utf-8') as f:
        entry = json.load(f)
    metrics, run = run_metrics(workdir)
    table = entry.get('table', 'results')
    if table == 'results':
        entry.setdefault('wall_time', '{wall}')
    names = list(dict.fromkeys(n for k in _keys(table) for n in fields(entry.get(k, ''))
                               if n not in ('wall', 'machine')))
    unknown = [n for n in names if n not in metrics]
    if unknown:
        raise errors.InputError(f'{path}: its cells name {", ".join(unknown)}, which {workdir} '
                                f'did not record; it has: {", ".join(sorted(metrics))}')
    entry['metrics'] = {n: metrics[n] for n in names}
    entry['run'] = run
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(entry, f, indent=1)
        f.write('\n')
    return entry


def main(argv=None):
    parser = errors.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('command', nargs='*', help='record WORKDIR RECORD.json')
    parser.add_argument('--check', action='store_true', help='change nothing; exit 1 if '
                        'README.md disagrees with the records or a row is stale')
    parser.add_argument('--results', default=os.path.join(REPO, 'results'))
    parser.add_argument('--readme', default=os.path.join(REPO, 'README.md'))
    args = parser.parse_args(argv)
    with errors.reported(False):
        if args.command:
            if args.command[0] != 'record' or len(args.command) != 3:
                parser.error('the one command is: record WORKDIR RECORD.json')
            entry = record(args.command[1], args.command[2])
            print(f'{args.command[2]}: {row(args.command[2], entry)}')
            return 0
        records = read_records(args.results)
        with open(args.readme, encoding='utf-8') as f:
            readme = f.read()
        new = rewrite(readme, records)
        stale = [(p, why) for p, r in records if (why := staleness(r))]
        for p, why in stale:
            print(f'STALE {os.path.relpath(p, REPO)}: {why}')
        if args.check:
            if new != readme:
                print(f'{args.readme} disagrees with {args.results}: run '
                      'python -m research.report.results')
            return 1 if new != readme or stale else 0
        if new != readme:
            with open(args.readme, 'w', encoding='utf-8') as f:
                f.write(new)
        print(f'{len(records)} rows written to {args.readme}; {len(stale)} stale')
        return 0


if __name__ == '__main__':
    sys.exit(main())
