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
from benchmark.runner import Cell, Runner, RunSettings
from benchmark.testing import tiny_encoder_spec
from datasets.base import DatasetSpec
from datasets.registry import DATASETS
from datasets.synthderm import build_synthderm
from evaluators.base import ExtractionSettings
from pretrained.registry import ENCODERS

ENCODER_NAMES = ("tiny-a", "tiny-b", "tiny-c")
CELLS = {"linear": {"wd_min_exp": -1, "wd_max_exp": 2, "wd_steps": 3, "max_iter": 100, "n_boot": 200}, "knn": {"ks": [5], "primary_k": 5, "n_boot": 200},
         "fewshot": {"shots": [2], "primary_shots": 2, "n_query": 3, "episodes": 60},
         "kshot-linear": {"ks": [2], "primary_k": 2, "seeds": 2, "wd_steps": 3, "max_iter": 50}}


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    """Three tiny encoders x synthderm-cmp x four evaluators, run once for the module."""
    results = tmp_path_factory.mktemp("cmp") / "results"
    for seed, name in enumerate(ENCODER_NAMES):
        ENCODERS.add(name, tiny_encoder_spec(name, seed=seed), origin="test")
    spec = DatasetSpec(name="synthderm-cmp", needs_root=False, description="test",
                       build=lambda root, options: _named(build_synthderm(None, {"n_lesions": 100, "image_size": 32, "seed": 3})))
    DATASETS.add(spec.name, spec, origin="test")
    settings = RunSettings(results_dir=results, extraction=ExtractionSettings(device=torch.device("cpu"), num_workers=0,
                                                                              cache_dir=None))
    runner = Runner(settings)
    for evaluator, overrides in CELLS.items():
        for name in ENCODER_NAMES:
            runner.run(Cell(name, "synthderm-cmp", evaluator, overrides=overrides))
    yield results
    for name in ENCODER_NAMES:
        ENCODERS.remove(name)
    DATASETS.remove(spec.name)


def _named(dataset):
    dataset.name = "synthderm-cmp"
    return dataset


def _records(results: Path, evaluator: str) -> dict[str, object]:
    records, errors = load_records(results)
    assert not errors
    return {r.identity.encoder: r for r in records if r.identity.evaluator == evaluator}


def test_every_evaluator_leaves_a_verified_side_file(grid):
    for evaluator in CELLS:
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
    for evaluator in CELLS:
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
    assert {row["evaluator"] for row in rows} == set(CELLS)
    missing = CliRunner().invoke(cli, ["compare", "tiny-a", "nope", "--results", str(grid)])
    assert missing.exit_code != 0 and "no record of encoder 'nope'" in missing.output
