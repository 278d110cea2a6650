"""The report: one self-contained folder a reader can open offline or paste into a paper.

``write_report(results_dir, out)`` writes::

    out/index.html        every leaderboard table and figure (inline CSS, figures by relative link, no external assets)
    out/leaderboard.md    the markdown leaderboard (as ``cli.py leaderboard``)
    out/leaderboard.csv   one row per record, with the paired-comparison and calibration columns
    out/tables/*.tex      each table as a LaTeX booktabs tabular (``\\usepackage{booktabs}``)
    out/figures/*.png|svg the figures of :mod:`benchmark.figures`

Everything is rebuilt from the records each time (a pure function of the results folder); each
file is written atomically.
"""
from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from benchmark.atomic import atomic_write_text
from benchmark.figures import FigureFile, slug, write_figures
from benchmark.leaderboard import LEGEND, Leaderboard, build_leaderboard, published_references, write_leaderboard

log = logging.getLogger(__name__)

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
figure { display: inline-block; margin: 0.5em 1em 1.5em 0; vertical-align: top; }
figure img { max-width: 560px; border: 1px solid #eee; }
figcaption { font-size: 0.8em; color: #555; }
.legend { font-size: 0.9em; background: #fafafa; border-left: 3px solid #888; padding: 0.5em 1em; }
"""


@dataclass
class Report:
    folder: Path
    index: Path
    markdown: Path
    csv: Path
    latex: list[Path]
    figures: list[FigureFile]
    board: Leaderboard


def latex_table(table: pd.DataFrame, caption: str) -> str:
    """A booktabs tabular with a caption comment; special characters escaped by tabulate."""
    body = tabulate(table, headers="keys", tablefmt="latex_booktabs", showindex=False)
    return f"% {caption}\n% needs \\usepackage{{booktabs}}\n{body}\n"


def _html_table(table: pd.DataFrame) -> str:
    return table.to_html(index=False, escape=True, border=0, na_rep="")


def _figure_html(figure: FigureFile, folder: Path) -> str:
    png, svg = figure.png.relative_to(folder).as_posix(), figure.svg.relative_to(folder).as_posix()
    title = html.escape(figure.title)
    return (f'<figure><a href="{html.escape(svg)}"><img src="{html.escape(png)}" alt="{title}"></a>'
            f'<figcaption>{title} (<a href="{html.escape(svg)}">SVG</a>)</figcaption></figure>')


def render_html(board: Leaderboard, figures: list[FigureFile], latex: list[Path], folder: Path) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>medtransfer report</title>", f"<style>{STYLE}</style></head><body>",
             "<h1>medtransfer report</h1>",
             '<p>Files: <a href="leaderboard.md">leaderboard.md</a>, <a href="leaderboard.csv">leaderboard.csv</a>, '
             "LaTeX tables in <code>tables/</code>.</p>",
             "".join(f'<p class="legend">{html.escape(paragraph)}</p>'.replace("**", "")
                     for paragraph in LEGEND.split("\n\n"))]
    shown: set[tuple[str, str]] = set()
    for index, ((title, table), key) in enumerate(zip(board.tables, board.table_keys)):
        if key not in shown:  # a new evaluator section: its heading, then its tables, then its figures
            if shown:
                parts += [_figure_html(f, folder) for f in figures if f.key == previous]
            parts.append(f"<h2>{html.escape(title)}</h2>")
            shown.add(key)
        else:
            parts.append(f"<h3>{html.escape(title)}</h3>")
        parts.append(_html_table(table))
        tex = latex[index]
        parts.append(f'<p><small>LaTeX: <a href="{html.escape(tex.relative_to(folder).as_posix())}">'
                     f"{html.escape(tex.name)}</a></small></p>")
        previous = key
    if shown:
        parts += [_figure_html(f, folder) for f in figures if f.key == previous]
    references = published_references(board)
    if not references.empty:
        parts += ["<h2>Published references</h2>", _html_table(references)]
    if board.notes:
        parts += ["<h2>Notes</h2>", "<ul>"] + [f"<li>{html.escape(note)}</li>" for note in board.notes] + ["</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(results_dir: Path, out: Path | None = None, seed: int = 0) -> Report:
    """Build the leaderboard once and write the whole report folder (default ``<results>/report``)."""
    folder = Path(out) if out else Path(results_dir) / "report"
    board = build_leaderboard(results_dir, seed=seed)
    markdown, csv, _ = write_leaderboard(results_dir, folder / "leaderboard.md", board=board)
    latex = []
    for index, (title, table) in enumerate(board.tables):
        path = folder / "tables" / f"{index:02d}-{slug(title)}.tex"
        atomic_write_text(path, latex_table(table, title))
        latex.append(path)
    figures = write_figures(board, folder / "figures")
    index_path = folder / "index.html"
    atomic_write_text(index_path, render_html(board, figures, latex, folder))
    current = set(latex) | {f.png for f in figures} | {f.svg for f in figures}
    for stale in [*(folder / "tables").glob("*.tex"), *(folder / "figures").glob("*.png"), *(folder / "figures").glob("*.svg")]:
        if stale not in current:  # from an earlier report of other records
            stale.unlink(missing_ok=True)
    log.info("report: %d tables, %d figures in %s", len(latex), len(figures), folder)
    return Report(folder, index_path, markdown, csv, latex, figures, board)
