"""The leaderboard's comparison sections: CI-aware ranks, paired table, Friedman, subgroups, calibration."""
from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark.leaderboard import build_leaderboard, render_markdown
from benchmark.records import Identity, ResultRecord, metric, write_record
from benchmark import stats


def test_ranks_are_ci_aware_and_the_paired_table_lists_every_encoder(comparison_grid):
    board = build_leaderboard(comparison_grid)
    titles = [title for title, _ in board.tables]
    for evaluator in ("linear", "knn", "fewshot", "kshot-linear"):
        assert any(t.startswith(evaluator + " (") and t.endswith(": paired differences to the best") for t in titles)
    for (evaluator, variant, column), analysis in board.columns.items():
        ranks = {e.encoder: e.rank for e in analysis.entries}
        assert ranks[analysis.best] == 1
        for entry in analysis.entries:
            if entry.vs_best is not None:  # rank 1 exactly when the Holm-adjusted p is >= alpha
                assert (entry.rank == 1) == (entry.p_holm >= stats.ALPHA)
        p_best = [e.p_best for e in analysis.entries if math.isfinite(e.p_best)]
        assert sum(p_best) == pytest.approx(1.0)
    rows = board.long[board.long["evaluator"] == "linear"]
    assert rows["paired"].all() and rows["p_best"].notna().all()
    markdown = render_markdown(board)
    assert "Holm-adjusted" in markdown and "†" not in markdown.split("## Notes")[0].split("\n\n", 3)[-1]


def test_subgroup_and_calibration_tables(comparison_grid):
    board = build_leaderboard(comparison_grid)
    tables = dict(board.tables)
    subgroup_titles = [t for t in tables if t.startswith("linear (") and " on synthderm-cmp: subgroups by " in t]
    assert subgroup_titles
    table = tables[subgroup_titles[0]]
    assert {"encoder", "worst", "gap best-worst [95 % CI]"} <= set(table.columns)
    assert any("n=" in str(v) for v in table.iloc[0].tolist())
    calibration = next(table for title, table in tables.items()
                       if title.startswith("linear (") and title.endswith(": calibration (ECE, 15 bins; lower is better)"))
    assert len(calibration) == 3 and calibration["temperature"].str.len().min() > 0
    assert "finetune" not in " ".join(tables)  # not run in this grid


def _record(encoder: str, dataset: str, value: float) -> ResultRecord:
    return ResultRecord(Identity(encoder, dataset, "linear"), {"balanced_accuracy": metric(value, (value - 0.1, value + 0.1))},
                        "balanced_accuracy", {"evaluator": "linear", "dataset": dataset}, {"encoder_kind": "random"})


def test_friedman_section_over_three_datasets(tmp_path):
    scores = np.array([[0.9, 0.8, 0.7], [0.85, 0.8, 0.6], [0.7, 0.9, 0.5]])
    for d, dataset in enumerate(("d1", "d2", "d3")):
        for e, encoder in enumerate(("a", "b", "c")):
            write_record(_record(encoder, dataset, scores[d, e]), tmp_path)
    write_record(_record("partial", "d1", 0.99), tmp_path)  # not on every dataset: left out of the test
    board = build_leaderboard(tmp_path)
    result = board.friedman[("linear", "default")]
    assert result.encoders == ["a", "b", "c"] and result.mean_ranks == pytest.approx([4 / 3, 5 / 3, 3])
    assert result.statistic == pytest.approx(42 / 9)
    assert any(title.startswith("linear: across datasets") for title, _ in board.tables)
    assert any("Friedman chi2 = 4.667" in note for note in board.notes)
