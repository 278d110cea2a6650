"""Side files through the runner, pairing rules, same-seed episodes, and `cli.py compare`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from benchmark import comparison
from benchmark.predictions import (PredictionsError, Predictions, image_predictions, load_predictions,
                                   predictions_path)
from benchmark.records import load_records, record_path, write_record

EVALUATORS = ("linear", "knn", "fewshot", "kshot-linear")  # the cells of tests/benchmark/conftest.py


@pytest.fixture
def grid(comparison_grid):
    return comparison_grid


def _records(results: Path, evaluator: str) -> dict[str, object]:
    records, errors = load_records(results)
    assert not errors
    return {r.identity.encoder: r for r in records if r.identity.evaluator == evaluator}


def test_every_evaluator_leaves_a_verified_side_file(grid):
    for evaluator in EVALUATORS:
        for record in _records(grid, evaluator).values():
            entry = record.extra["predictions_file"]
            path = record_path(grid, record.identity)
            assert predictions_path(path).is_file() and entry["format"] == 1
            predictions = load_predictions(record, path)
            if evaluator == "fewshot":
                assert predictions.unit == "episode" and len(predictions.scores) == 60
                assert predictions.scores.mean() == pytest.approx(record.metrics["accuracy"]["value"])
            else:
                assert predictions.unit == "image" and len(predictions.ids) == record.protocol["splits"]["sizes"]["test"]
    kshot = load_predictions(*_first(grid, "kshot-linear"))
    assert kshot.probabilities.shape[0] == 2 and kshot.meta["replicates"] == "support seeds"
    linear = load_predictions(*_first(grid, "linear"))
    assert "fitzpatrick" in linear.subgroups


def _first(results, evaluator):
    record = _records(results, evaluator)["tiny-a"]
    return record, record_path(results, record.identity)


def test_linear_records_carry_ece_before_and_after_temperature_scaling(grid):
    record = _records(grid, "linear")["tiny-a"]
    assert record.metrics["ece"]["bins"] == 15 and record.metrics["ece"]["ci"] is not None
    assert record.metrics["ece_temperature_scaled"]["temperature"] > 0


def test_same_seed_gives_the_same_episodes_for_every_encoder(grid):
    fingerprints = {load_predictions(r, record_path(grid, r.identity)).fingerprint
                    for r in _records(grid, "fewshot").values()}
    assert len(fingerprints) == 1
    # and another seed draws other episodes
    from evaluators.fewshot import sample_episodes
    labels = np.repeat(np.arange(3), 10)
    same = sample_episodes(labels, [0, 1, 2], 2, 5, 20, seed=7), sample_episodes(labels, [0, 1, 2], 2, 5, 20, seed=7)
    assert torch.equal(*same) and not torch.equal(same[0], sample_episodes(labels, [0, 1, 2], 2, 5, 20, seed=8))


def test_compare_reproduces_the_records_and_picks_the_test(grid):
    methods = {}
    for evaluator in EVALUATORS:
        records = _records(grid, evaluator)
        result = comparison.compare(records["tiny-a"], records["tiny-b"], grid, n_boot=200)
        primary = records["tiny-a"].primary_metric
        assert result.value_a == pytest.approx(records["tiny-a"].metrics[primary]["value"])
        assert result.ci[0] <= result.difference <= result.ci[1] and 0 <= result.p_value <= 1
        methods[evaluator] = result.method
    assert methods["fewshot"] == "paired t over episodes"
    assert methods["linear"].startswith("paired stratified bootstrap")
    assert "2 replicates redrawn" in methods["kshot-linear"]


def test_stale_side_file_and_other_protocols_are_refused(grid, tmp_path):
    records = _records(grid, "linear")
    a, b = records["tiny-a"], records["tiny-b"]
    other = type(b)(identity=b.identity, metrics=b.metrics, primary_metric=b.primary_metric,
                    protocol={**b.protocol, "options": {**b.protocol["options"], "wd_steps": 7}},
                    provenance=b.provenance, subgroups=b.subgroups, extra=b.extra)
    with pytest.raises(comparison.ComparisonError, match="different protocols"):
        comparison.compare(a, other, grid)
    # a side file that is not the one the record points at
    copy = tmp_path / "results"
    write_record(a, copy)
    path = predictions_path(record_path(copy, a.identity))
    path.write_bytes(image_predictions(["x"], [0], [[1.0, 0.0, 0, 0, 0, 0, 0]]).to_bytes())
    with pytest.raises(PredictionsError, match="sha256 differs"):
        load_predictions(a, record_path(copy, a.identity))
    path.unlink()
    with pytest.raises(PredictionsError, match="missing"):
        load_predictions(a, record_path(copy, a.identity))


def test_predictions_roundtrip_and_format_version():
    p = image_predictions(["a", "b"], [0, 1], [[0.7, 0.3], [0.4, 0.6]], {"sex": np.array(["f", None], dtype=object)},
                          fingerprint="abc", k=3)
    back = Predictions.from_bytes(p.to_bytes())
    assert back.ids.tolist() == ["a", "b"] and back.subgroups["sex"].tolist() == ["f", ""]
    assert back.probabilities.shape == (1, 2, 2) and back.meta == {"k": 3} and back.fingerprint == "abc"
    import io
    buffer = io.BytesIO()
    np.savez(buffer, format_version=np.array(99))
    with pytest.raises(PredictionsError, match="format version 99"):
        Predictions.from_bytes(buffer.getvalue())
    with pytest.raises(PredictionsError, match="not unique"):
        image_predictions(["a", "a"], [0, 1], [[0.7, 0.3], [0.4, 0.6]])


def test_cli_compare(grid):
    from cli import cli
    result = CliRunner().invoke(cli, ["compare", "tiny-a", "tiny-b", "--results", str(grid), "--evaluator", "linear",
                                      "--n-boot", "200"])
    assert result.exit_code == 0, result.output
    assert "tiny-a - tiny-b" in result.output and "p =" in result.output
    every = CliRunner().invoke(cli, ["compare", "tiny-a", "tiny-b", "--results", str(grid), "--n-boot", "100", "--json"])
    assert every.exit_code == 0, every.output
    rows = json.loads(every.output)
    assert {row["evaluator"] for row in rows} == set(EVALUATORS)
    missing = CliRunner().invoke(cli, ["compare", "tiny-a", "nope", "--results", str(grid)])
    assert missing.exit_code != 0 and "no record of encoder 'nope'" in missing.output


def test_subgroup_gap_with_its_bootstrap_ci(grid):
    record, path = _first(grid, "knn")
    predictions = load_predictions(record, path)
    gap = comparison.subgroup_gap(record, "sex", predictions, min_n=10, n_boot=300)
    entries = record.subgroups["sex"]
    values = {k: v[record.primary_metric]["value"] for k, v in entries.items()}
    assert gap.worst == min(values, key=values.get) and gap.best == max(values, key=values.get)
    assert gap.gap == pytest.approx(max(values.values()) - min(values.values()))
    assert gap.ci is not None and gap.ci[0] <= gap.gap <= gap.ci[1]
    assert comparison.subgroup_gap(record, "sex", None, min_n=10).ci is None  # no side file: no CI
    assert comparison.subgroup_gap(record, "sex", predictions, min_n=1000) is None  # every subgroup small
