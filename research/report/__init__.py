"""A run's report: one self-contained HTML page and a Markdown summary of its workdir.

    python -m research.report runs/gan_mnist                  # runs/gan_mnist/report.{html,md}
    python -m research.report runs/vae_mnist --out /tmp/vae.html     # and /tmp/vae.md

The page embeds everything it shows (matplotlib curves, the sample grids, the config) as data
URIs and inline CSS, so it opens offline, mailed or attached to an issue, and loads nothing.
  run.py       the workdir read back, and the rows and series both outputs show
  page.py      the HTML page
  markdown.py  the Markdown summary
"""
import os

from research import errors

from research.report import page
from research.report.markdown import markdown
from research.report.run import load_run


def write_report(workdir: str, out: str | None = None) -> tuple[str, str]:
    """Writes the HTML page (default WORKDIR/report.html) and the Markdown beside it."""
    run = load_run(workdir)
    html_path = out or os.path.join(workdir, 'report.html')
    md_path = os.path.splitext(html_path)[0] + '.md'
    if md_path == html_path:
        raise errors.InputError(f'--out {out} ends in .md, where the Markdown summary goes; '
                                'name the HTML file (e.g. report.html)')
    os.makedirs(os.path.dirname(os.path.abspath(html_path)), exist_ok=True)
    with open(html_path, 'w', encoding='utf-8') as f:
        f.write(page.render(run))
    with open(md_path, 'w', encoding='utf-8') as f:
        f.write(markdown(run, os.path.dirname(os.path.abspath(md_path))))
    return html_path, md_path


def main(argv=None):
    parser = errors.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('workdir', help='a run directory (holding metrics.jsonl)')
    parser.add_argument('--out', help='HTML path (default WORKDIR/report.html); the Markdown '
                                      'summary goes beside it with the suffix .md')
    args = parser.parse_args(argv)
    with errors.reported():
        try:
            html_path, md_path = write_report(args.workdir, args.out)
        except OSError as e:
            if errors.is_disk_full(e):
                raise
            raise errors.UserError(str(e)) from e
    print(f'wrote {html_path} and {md_path}')
