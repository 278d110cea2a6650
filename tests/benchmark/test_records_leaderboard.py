from __future__ import annotations

import json

import pytest

from benchmark.leaderboard import build_leaderboard, render_markdown, write_leaderboard
from benchmark.records import (Identity, ResultRecord, load_records, metric, protocol_hash, record_exists,
                               record_path, write_record)


def _record(encoder: str, value: float, dataset: str = "synthderm", evaluator: str = "linear",
            protocol: dict | None = None, ips: float = 100.0) -> ResultRecord:
    return ResultRecord(identity=Identity(encoder, dataset, evaluator),
                        metrics={"balanced_accuracy": metric(value, (value - 0.05, value + 0.05)),
                                 "accuracy": metric(value + 0.1)},
                        primary_metric="balanced_accuracy", protocol=protocol or {"evaluator": evaluator, "C": "grid"},
                        provenance={"encoder_kind": "random", "cost_images_per_second": ips, "wall_seconds": 2.0})


def test_roundtrip_and_atomic_write(tmp_path):
    record = _record("resnet18-random", 0.4)
    path = write_record(record, tmp_path)
    assert path == record_path(tmp_path, record.identity) and path.is_file()
    assert not list(path.parent.glob(".*.tmp"))
    loaded, errors = load_records(tmp_path)
    assert errors == [] and loaded[0].to_json() == record.to_json()
    assert record_exists(tmp_path, record.identity)


def test_protocol_hash_is_canonical():
    assert protocol_hash({"a": 1, "b": [1, 2]}) == protocol_hash({"b": [1, 2], "a": 1})
    assert protocol_hash({"a": 1}) != protocol_hash({"a": 2})


def test_primary_metric_must_exist():
    with pytest.raises(ValueError, match="primary metric"):
        ResultRecord(Identity("e", "d", "linear"), {"accuracy": metric(0.5)}, "auroc", {}, {})


def test_corrupt_record_skipped_and_reported(tmp_path):
    write_record(_record("a", 0.5), tmp_path)
    write_record(_record("b", 0.7), tmp_path)
    bad = record_path(tmp_path, Identity("c", "synthderm", "linear"))
    bad.write_text('{"identity": {"encoder": "c", "dataset": "synth')  # truncated JSON
    assert not record_exists(tmp_path, Identity("c", "synthderm", "linear"))
    board = build_leaderboard(tmp_path)
    assert len(board.errors) == 1 and board.errors[0][0] == bad
    assert set(board.long["encoder"]) == {"a", "b"}
    assert any("skipped unreadable record" in note for note in board.notes)


def test_table_ranks_ci_metric_and_cost(tmp_path):
    write_record(_record("low", 0.3, ips=50.0), tmp_path)
    write_record(_record("high", 0.8, ips=10.0), tmp_path)
    board = build_leaderboard(tmp_path)
    title, table = board.tables[0]
    assert title == "linear"
    column = "synthderm (balanced_accuracy)"
    assert list(table["encoder"]) == ["high", "low"]
    assert table.loc[0, column] == "0.800 [0.750, 0.850] (#1†)"  # † : no side files, so a plain rank
    assert table.loc[1, column].endswith("(#2†)")
    assert list(table["images/s"]) == ["10.0", "50.0"]
    markdown = render_markdown(board)
    assert "| encoder" in markdown and "0.800 [0.750, 0.850] (#1†)" in markdown


def test_different_protocols_are_never_merged(tmp_path):
    write_record(_record("a", 0.5, protocol={"evaluator": "linear", "C": 1}), tmp_path)
    write_record(_record("b", 0.6, protocol={"evaluator": "linear", "C": 2}), tmp_path)
    board = build_leaderboard(tmp_path)
    _, table = board.tables[0]
    protocol_columns = [c for c in table.columns if c.startswith("synthderm @")]
    assert len(protocol_columns) == 2
    assert any("different protocols" in note and "never merged" in note for note in board.notes)
    # each encoder ranks #1 in its own protocol column, never against the other
    assert all("(#1)" in value for value in table[protocol_columns].to_numpy().ravel() if value)


def test_write_leaderboard_files(tmp_path):
    write_record(_record("a", 0.5), tmp_path)
    markdown, csv, _ = write_leaderboard(tmp_path)
    assert markdown.read_text().startswith("# medtransfer leaderboard")
    header = csv.read_text().splitlines()[0]
    assert "ci_low" in header and "protocol_hash" in header


def test_detail_tables_for_probes(tmp_path):
    record = ResultRecord(Identity("a", "synthderm", "invariance"),
                          {"mean": metric(0.6, (0.5, 0.7)), "rotation": metric(0.5, (0.4, 0.6)), "hflip": metric(0.7)},
                          "mean", {"evaluator": "invariance"}, {}, extra={"detail_metrics": ["rotation", "hflip"]})
    write_record(record, tmp_path)
    titles = [title for title, _ in build_leaderboard(tmp_path).tables]
    assert titles == ["invariance", "invariance on synthderm: all metrics"]


def test_run_time_choices_do_not_split_a_protocol(tmp_path):
    write_record(_record("a", 0.5, protocol={"evaluator": "linear", "resolved": {"C": 0.1}}), tmp_path)
    write_record(_record("b", 0.6, protocol={"evaluator": "linear", "resolved": {"C": 10.0}}), tmp_path)
    board = build_leaderboard(tmp_path)
    assert not board.notes
    assert "synthderm (balanced_accuracy)" in board.tables[0][1].columns


def test_stored_hash_is_recomputed_on_load(tmp_path):
    path = write_record(_record("a", 0.5), tmp_path)
    data = json.loads(path.read_text())
    data["protocol_hash"] = "tampered"
    path.write_text(json.dumps(data))
    loaded, _ = load_records(tmp_path)
    assert loaded[0].protocol_hash == protocol_hash(data["protocol"])


def test_mean_over_seeds_without_ci_shows_its_sd(tmp_path):
    record = ResultRecord(identity=Identity("tiny", "synthderm", "kshot-linear"),
                          metrics={"balanced_accuracy": metric(0.25, None, sd=0.023, n_seeds=3)},
                          primary_metric="balanced_accuracy", protocol={"evaluator": "kshot-linear", "C": "grid"},
                          provenance={"encoder_kind": "random", "wall_seconds": 1.0})
    write_record(record, tmp_path)
    write_record(_record("other", 0.4, evaluator="kshot-linear"), tmp_path)
    markdown = render_markdown(build_leaderboard(tmp_path))
    assert "0.250 ± 0.023 (#2†)" in markdown and "0.400 [0.350, 0.450] (#1†)" in markdown


def test_cells_with_unconverged_fits_are_marked(tmp_path):
    converged = {"evaluator": "linear", "resolved": {"unconverged_C": []}}
    write_record(_record("a", 0.5, protocol=converged), tmp_path)
    write_record(_record("b", 0.4, protocol={"evaluator": "linear", "resolved": {"unconverged_C": [1e6, 3e5]}}),
                 tmp_path)
    board = build_leaderboard(tmp_path)
    rows = board.tables[0][1].set_index("encoder")
    cell = [c for c in rows.columns if c.startswith("synthderm")][0]
    assert rows.loc["b", cell].endswith(" §") and not rows.loc["a", cell].endswith("§")
    assert any(note.startswith("§") for note in board.notes)
    assert board.long.set_index("encoder").loc["b", "unconverged_fits"] == 2


def test_a_chosen_C_whose_fit_was_tol_limited_is_marked(tmp_path):
    def protocol(limited):
        return {"evaluator": "linear", "resolved": {"C": 31.622776601683793, "unconverged_C": [],
                                                    "tol_limited_C": limited}}
    write_record(_record("a", 0.5, protocol=protocol([1000.0])), tmp_path)
    write_record(_record("b", 0.4, protocol=protocol([31.622776601683793, 1000.0])), tmp_path)
    board = build_leaderboard(tmp_path)
    rows = board.tables[0][1].set_index("encoder")
    cell = [c for c in rows.columns if c.startswith("synthderm")][0]
    assert rows.loc["b", cell].endswith(" ‡") and "‡" not in rows.loc["a", cell]
    assert any(note.startswith("‡") for note in board.notes)
