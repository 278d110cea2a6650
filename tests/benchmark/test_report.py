"""The report folder: HTML parses, every referenced file exists, LaTeX is booktabs, figures are written."""
from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from benchmark.figures import cd_diagram, write_figures
from benchmark.leaderboard import build_leaderboard
from benchmark.records import Identity, ResultRecord, metric, write_record
from benchmark.report import write_report
from benchmark import stats


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in ("img", "meta", "br", "link"):
            self.open.append(tag)
        for name, value in attrs:
            if name in ("href", "src"):
                self.links.append(value)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()


def _check_html(index: Path) -> list[str]:
    parser = _Links()
    parser.feed(index.read_text())
    assert parser.open == []
    for link in parser.links:
        assert "://" not in link and not link.startswith("/"), f"external or absolute link {link}"
        assert (index.parent / link).is_file(), f"{link} is referenced but missing"
    return parser.links


def test_report_of_the_comparison_grid(comparison_grid, tmp_path):
    report = write_report(comparison_grid, tmp_path / "report")
    links = _check_html(report.index)
    assert {"leaderboard.md", "leaderboard.csv"} <= set(links)
    assert any(link.startswith("figures/forest-") and link.endswith(".png") for link in links)
    assert any(link.startswith("figures/cost-") for link in links)
    assert any(link.startswith("tables/") and link.endswith(".tex") for link in links)
    tex = report.latex[0].read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert all(f.png.stat().st_size > 0 and f.svg.read_text().lstrip().startswith("<?xml") for f in report.figures)


def _record(encoder, dataset, value, evaluator="linear", detail=None):
    metrics = {"balanced_accuracy": metric(value, (value - 0.1, value + 0.1))}
    extra = {}
    if detail:
        metrics = {"mean": metric(value, (value - 0.1, value + 0.1)), **{k: metric(v) for k, v in detail.items()}}
        extra = {"detail_metrics": list(detail)}
    return ResultRecord(Identity(encoder, dataset, evaluator), metrics, "mean" if detail else "balanced_accuracy",
                        {"evaluator": evaluator, "dataset": dataset},
                        {"encoder_kind": "random", "cost_images_per_second": 50.0 + value}, extra=extra)


def test_cd_diagram_and_invariance_heatmap_over_hand_made_records(tmp_path):
    rng = np.random.default_rng(0)
    for dataset in ("d1", "d2", "d3", "d4"):
        for e, encoder in enumerate(("a", "b", "c", "d")):
            write_record(_record(encoder, dataset, 0.5 + 0.1 * e + 0.05 * rng.random()), tmp_path)
    for encoder in ("a", "b"):
        write_record(_record(encoder, "d1", 0.4, "invariance", {"rotation": 0.3, "hflip": 0.8}), tmp_path)
    report = write_report(tmp_path, tmp_path / "out")
    names = [f.png.name for f in report.figures]
    assert "cd-linear-default.png" in names and "heatmap-invariance-default-d1.png" in names
    _check_html(report.index)
    result = CliRunner().invoke(__import__("cli").cli, ["report", "--results", str(tmp_path), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli" / "index.html").is_file()
    missing = CliRunner().invoke(__import__("cli").cli, ["report", "--results", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "no records/ folder" in missing.output
