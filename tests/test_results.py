"""README's results table against its records (results/*.json), and how a record is made and
judged stale (research/report/results.py)."""
import json
import os
import subprocess

import pytest

from research.errors import InputError
from research.report import results

README = os.path.join(results.REPO, 'README.md')


def test_readme_table_is_the_one_the_records_generate():
    records = results.read_records(os.path.join(results.REPO, 'results'))
    with open(README, encoding='utf-8') as f:
        readme = f.read()
    assert len(records) >= 15 and readme.count(results.BEGIN) == 1
    assert results.rewrite(readme, records) == readme, (
        'README.md disagrees with results/*.json: run python -m research.report.results')


def test_module_files_follow_imports_inside_the_repository():
    files = results.module_files('experiments.gan_mnist')
    assert {'experiments/gan_mnist.py', 'experiments/__init__.py', 'research/objectives/gan.py',
            'research/train/loop.py', 'research/evals/sample_quality.py'} <= set(files)
    assert 'experiments/vae_mnist.py' not in files and 'research/objectives/vae.py' not in files
    assert all(os.path.isfile(os.path.join(results.REPO, f)) for f in files)


def git(repo, *args):
    out = subprocess.run(['git', '-C', str(repo), *args], capture_output=True, text=True,
                         check=True, env={**os.environ, 'GIT_AUTHOR_NAME': 't',
                                          'GIT_AUTHOR_EMAIL': 't@t', 'GIT_COMMITTER_NAME': 't',
                                          'GIT_COMMITTER_EMAIL': 't@t'})
    return out.stdout.strip()


def commit(repo, files: dict) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, 'add', '-A')
    git(repo, 'commit', '-q', '-m', 'c')
    return git(repo, 'rev-parse', 'HEAD')


def test_a_row_is_stale_once_code_it_imports_changes(tmp_path):
    repo = tmp_path / 'repo'
    repo.mkdir()
    git(repo, 'init', '-q')
    measured = commit(repo, {'exp/__init__.py': '', 'exp/run.py': 'from lib import a\n',
                             'lib/__init__.py': '', 'lib/a.py': 'from . import b\n',
                             'lib/b.py': 'X = 1\n', 'lib/other.py': 'Y = 1\n'})
    entry = {'module': 'exp.run', 'run': {'commit': measured}}
    assert results.module_files('exp.run', str(repo)) == [
        'exp/__init__.py', 'exp/run.py', 'lib/__init__.py', 'lib/a.py', 'lib/b.py']
    assert results.staleness(entry, str(repo)) is None
    assert results.staleness({**entry, 'run': {'commit': measured, 'dirty': True}}, str(repo)
                             ) == f'measured with uncommitted changes to {measured[:10]}'
    commit(repo, {'lib/other.py': 'Y = 2\n', 'README.md': 'words'})  # code the row never runs
    assert results.staleness(entry, str(repo)) is None
    commit(repo, {'lib/b.py': '"""What b is."""\nX = 1  # one\n',  # words, not code
                  'exp/run.py': '"""Runs."""\nfrom lib import a\n'})
    assert results.staleness(entry, str(repo)) is None
    commit(repo, {'lib/b.py': '"""What b is."""\nX = 2  # one\n'})  # imported through lib.a
    why = results.staleness(entry, str(repo))
    assert why.startswith(f'measured at {measured[:10]}') and why.endswith('lib/b.py')
    assert results.staleness({'module': 'exp.run', 'run': {'source': 'typed in'}},
                             str(repo)) == 'no run record (typed in)'
    assert 'not in this repository' in results.staleness(
        {'module': 'exp.run', 'run': {'commit': '0' * 40}}, str(repo))


def test_record_takes_the_metrics_and_the_run_from_the_workdir(tmp_path):
    workdir = tmp_path / 'run'
    workdir.mkdir()
    (workdir / 'metrics.jsonl').write_text(
        '{"step": 10, "time": 100.0, "scores/fid": 200.0}\n'
        '{"step": 20, "time": 130.0, "scores/fid": 117.06, "d_loss": 1.3}\n')
    (workdir / 'run_info.json').write_text(json.dumps({'starts': [
        {'time': 90.0, 'time_utc': '2026-12-02T05:00:00Z', 'git_commit': 'abc123',
         'cpu_model': 'Intel(R) Xeon(R)', 'device_kinds': {'cpu': 1}}]}))
    (workdir / 'results.json').write_text(json.dumps({'finetune': {'accuracy': 0.95}}))
    path = tmp_path / 'row.json'
    path.write_text(json.dumps({
        'experiment': 'DCGAN', 'command': 'python -m experiments.gan_mnist', 'data': 'MNIST',
        'hardware': '2 CPU cores', 'module': 'experiments.gan_mnist', 'metrics': {}, 'run': {},
        'result': 'FID {scores/fid:.1f}, accuracy {results.json/finetune/accuracy:.1%}'}))
    entry = results.record(str(workdir), str(path))
    assert entry['metrics'] == {'scores/fid': 117.06, 'results.json/finetune/accuracy': 0.95}
    assert entry['run']['commit'] == 'abc123' and entry['run']['wall_s'] == 40.0
    assert entry['run']['machine'] == 'Intel(R) Xeon(R)' and entry['wall_time'] == '{wall}'
    assert json.loads(path.read_text()) == entry
    assert results.row(str(path), entry) == (
        '| DCGAN | `python -m experiments.gan_mnist` | MNIST | 2 CPU cores | 40 s | '
        'FID 117.1, accuracy 95.0% |')
    entry['result'] = 'KID {scores/kid:.1f}'
    path.write_text(json.dumps(entry))
    with pytest.raises(InputError, match=r'row\.json: its cells name scores/kid, which .* did '
                                         r'not record; it has: d_loss, results\.json/finetune/'
                                         r'accuracy, scores/fid'):
        results.record(str(workdir), str(path))


def test_each_table_takes_its_own_records_and_cells_and_all_must_be_in_the_readme():
    run = {'commit': 'abc', 'wall_s': 61.0, 'machine': 'Intel(R) Xeon(R) Processor'}
    main = {'experiment': 'GAN', 'command': 'c', 'data': 'd', 'hardware': '2 cores ({machine})',
            'wall_time': '{wall}', 'result': 'FID {fid:.1f}', 'metrics': {'fid': 117.06},
            'run': run}
    samples = {'table': 'samples', 'experiment': 'GAN samples', 'fid': '{fid:.2f}',
               'kid': '{kid:.1f}', 'classifier_score': 'x | y', 'metrics': {'fid': 117.06,
                                                                          'kid': 29.94},
               'run': run}
    family = {'table': 'families', 'experiment': 'DCGAN', 'command': 'c', 'wall_time': '{wall}',
              'fid': '{fid:.1f}', 'kid': '{kid:.1f}', 'classifier_score': 's',
              'likelihood': 'none', 'metrics': {'fid': 117.06, 'kid': 29.94}, 'run': run}
    records = [('a.json', main), ('b.json', samples), ('c.json', family)]
    assert results.table('families', records).splitlines()[3] == (
        '| DCGAN | `c` | 1 min 01 s | 117.1 | 29.9 | s | none |')
    assert results.table('samples', records).splitlines()[1:-1] == [
        '| what is scored (10,000 images unless said) | FID | KID | classifier score |',
        '|---|---|---|---|', '| GAN samples | 117.06 | 29.9 | x \\| y |']
    assert results.table('results', records).splitlines()[3] == (
        '| GAN | `c` | d | 2 cores (Intel Xeon) | 1 min 01 s | FID 117.1 |')
    readme = '\n'.join(f'{results._begin(t)}\nold\n{results.END}'
                        for t in ('results', 'samples', 'families', 'judges'))
    new = results.rewrite('intro\n' + readme + '\nend', records)
    assert new.startswith('intro\n' + results.table('results', records)) and 'old' not in new
    assert '| MNIST | `python -m experiments.classifier --config=experiments/classifier.py:' \
           'judge_mnist --workdir runs/judge_mnist` |' in new and new.endswith('\nend')
    with pytest.raises(InputError, match='should hold one <!-- samples table: .* it holds 0'):
        results.rewrite(readme.replace('samples table', 'sample table'), records)


def test_a_record_naming_an_unknown_table_or_lacking_a_cell_is_refused(tmp_path):
    (tmp_path / 'a.json').write_text(json.dumps({'table': 'speed', 'metrics': {}}))
    with pytest.raises(InputError, match=r"a\.json: table 'speed' is not one of results, "
                                         r"samples, families"):
        results.read_records(str(tmp_path))
    (tmp_path / 'a.json').write_text(json.dumps({'table': 'samples', 'experiment': 'e',
                                                 'fid': 'f', 'module': 'm', 'metrics': {},
                                                 'run': {}}))
    with pytest.raises(InputError, match=r'a\.json: missing kid, classifier_score$'):
        results.read_records(str(tmp_path))


def test_record_of_a_run_in_phases_sums_their_wall_times_and_refuses_mixed_commits(tmp_path):
    workdir = tmp_path / 'dbn'
    for phase, (t0, t1, commit) in {'rbm_1': (10.0, 70.0, 'abc'),
                                    'finetune': (100.0, 130.0, 'abc')}.items():
        (workdir / phase).mkdir(parents=True)
        (workdir / phase / 'metrics.jsonl').write_text(
            f'{{"step": 5, "time": {t0 + 5}}}\n{{"step": 9, "time": {t1}, '
            f'"heldout/accuracy": {0.9 if phase == "finetune" else 0.1}}}\n')
        (workdir / phase / 'run_info.json').write_text(json.dumps({'starts': [
            {'time': t0, 'time_utc': f'T{t0}', 'git_commit': commit, 'git_dirty': False}]}))
    (workdir / 'results.json').write_text(json.dumps({'layers': [{'ll': -113.0}]}))
    path = tmp_path / 'row.json'
    path.write_text(json.dumps({
        'experiment': 'DBN', 'command': 'c', 'data': 'd', 'hardware': 'h', 'module': 'm',
        'metrics': {}, 'run': {}, 'result': '{results.json/layers/0/ll} {finetune/heldout/'
                                           'accuracy:.0%} {rbm_1/heldout/accuracy}'}))
    entry = results.record(str(workdir), str(path))
    assert entry['metrics'] == {'results.json/layers/0/ll': -113.0,
                                'finetune/heldout/accuracy': 0.9, 'rbm_1/heldout/accuracy': 0.1}
    assert entry['run']['wall_s'] == 90.0 and entry['run']['commit'] == 'abc'  # 60 s + 30 s
    assert entry['run']['date'] == 'T10.0' and entry['run']['steps'] == 18  # the first phase's
    (workdir / 'rbm_1' / 'run_info.json').write_text(json.dumps({'starts': [
        {'time': 10.0, 'git_commit': 'def', 'git_dirty': False}]}))
    with pytest.raises(InputError, match=r'dbn: its phases ran at different commits \(abc, def\)'):
        results.record(str(workdir), str(path))
