"""The Markdown summary of a run: the summary, final metrics, hardware and links to the PNGs."""
import os
import time

from research.report.run import (RUN_INFO, Run, final_rows, hardware_rows, split_series,
                                 summary_rows)


def _md_table(header: tuple, rows: list) -> list[str]:
    cell = lambda text: str(text).replace('|', '\\|').replace('\n', ' ')
    return ([f'| {" | ".join(header)} |', '|' + '---|' * len(header)]
            + [f'| {" | ".join(cell(c) for c in row)} |' for row in rows])


def markdown(run: Run, md_dir: str) -> str:
    """The summary, final metrics, hardware and links to the PNGs, relative to `md_dir`."""
    link = lambda path: os.path.relpath(path, md_dir).replace(os.sep, '/')
    train, evaluation = split_series(run.records)
    lines = [f'# Run report: {run.name}', '', f'`{os.path.abspath(run.workdir)}`, generated '
             f'{time.strftime("%Y-%m-%d %H:%M:%S %Z")}', '', '## Summary', '']
    lines += _md_table(('', ''), summary_rows(run))
    lines += ['', '## Final metrics', '']
    lines += _md_table(('metric', 'step', 'value'), final_rows(evaluation) + final_rows(train))
    lines += ['', '## Hardware', '']
    hardware = hardware_rows(run.starts)
    lines += _md_table(('', ''), hardware) if hardware else [
        f'not recorded ({RUN_INFO} is absent: the run predates it)']
    lines += ['', '## Samples', '']
    for series, items in run.timelines.items():
        lines.append(f'- {series}: ' + ', '.join(f'[step {step}]({link(path)})'
                                                  for step, path in items))
    lines += [f'- [{os.path.basename(p)}]({link(p)})' for p in run.images]
    for series, items in run.timelines.items():
        step, path = items[-1]
        lines += ['', f'![{series}, step {step}]({link(path)})']
    return '\n'.join(lines) + '\n'
