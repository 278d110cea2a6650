"""Resume compares the whole protocol: a changed setting never reuses (or silently replaces) a record.

Each test is a case that was a stale skip before: the second run printed "skipped (record exists)"
and the leaderboard published the first run's number.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from benchmark.records import load_records, read_record
from benchmark.runner import Cell, RecordConflictError, Runner, RunSettings
from cli import cli
from evaluators.base import ExtractionSettings
from evaluators.registry import EVALUATORS

KNN = {"ks": [5], "primary_k": 5}


def _runner(results_dir: Path, image_size: int | None = None, **settings) -> Runner:
    extraction = ExtractionSettings(torch.device("cpu"), None, num_workers=0, image_size=image_size)
    return Runner(RunSettings(results_dir=results_dir, extraction=extraction, **settings))


def _knn(runner: Runner, dataset: str = "synthderm-mini", **cell):
    return runner.run(Cell("tiny-cnn", dataset, "knn", **cell))


def _knn_csv(runner: Runner):
    return _knn(runner, "csv", overrides=KNN)


def test_image_size_and_seed_make_records_of_their_own(results_dir, tiny_encoder, mini_synthderm):
    first = _knn(_runner(results_dir, image_size=24))
    second = _knn(_runner(results_dir, image_size=32))
    seeded = _knn(_runner(results_dir, image_size=32, seed=3))
    assert [o.status for o in (first, second, seeded)] == ["done", "done", "done"]
    assert [o.record.identity.variant for o in (first, second, seeded)] == ["default-24px", "default-32px",
                                                                            "default-32px-seed3"]
    assert first.record.protocol["image_size_override"] == 24 and seeded.record.protocol["splits"]["seed"] == 3
    again = _knn(_runner(results_dir, image_size=24))
    assert again.status == "skipped" and again.record.to_json() == first.record.to_json()
    native = _knn(_runner(results_dir))  # `benchmark --image-size 0` after a default (128 px) run
    assert native.status == "done" and native.record.identity.variant == "default"
    records, errors = load_records(results_dir)
    assert errors == [] and len(records) == 4


def test_a_split_file_makes_a_record_of_its_own(results_dir, tiny_encoder, mini_synthderm, tmp_path):
    generated = _knn(_runner(results_dir))
    split_csv = next((results_dir / "splits").glob("synthderm-mini__*.csv"))
    lines = split_csv.read_text().splitlines()
    mine = tmp_path / "mine.csv"  # the generated split with train and val swapped: another split
    mine.write_text("\n".join([lines[0]] + [line.replace(",train", ",TMP").replace(",val", ",train").replace(",TMP", ",val")
                                            for line in lines[1:]]) + "\n")
    imposed = _knn(_runner(results_dir, split_file=mine))
    assert imposed.status == "done" and imposed.record.identity.variant.startswith("default-split")
    assert imposed.record.protocol["splits"]["sha256"] != generated.record.protocol["splits"]["sha256"]
    assert _knn(_runner(results_dir, split_file=mine)).status == "skipped"


def test_other_dataset_options_under_one_name_are_refused_before_compute(results_dir, tiny_encoder, mini_synthderm,
                                                                         monkeypatch):
    _knn(_runner(results_dir))
    spec = EVALUATORS.get("knn")
    monkeypatch.setattr(spec, "run", lambda context, options: pytest.fail("computed before refusing"))
    runner = _runner(results_dir, dataset_options={"synthderm-mini": {"n_lesions": 100}})
    plan = runner.plan(Cell("tiny-cnn", "synthderm-mini", "knn"))
    assert plan.action == "refuse" and "dataset.options" in plan.reason and "--overwrite" in plan.reason
    with pytest.raises(RecordConflictError, match=r"dataset.options: <absent> -> \{\"n_lesions\": 100\}"):
        _knn(runner)


def test_an_explicit_variant_with_another_protocol_is_refused_then_overwritten(results_dir, tiny_encoder, mini_synthderm):
    _knn(_runner(results_dir), overrides=KNN, variant="mine")
    with pytest.raises(RecordConflictError, match=r"image_size_override: null -> 24\); pass --overwrite to replace it, or use another --results folder"):
        _knn(_runner(results_dir, image_size=24), overrides=KNN, variant="mine")
    replaced = _knn(_runner(results_dir, image_size=24, overwrite=True), overrides=KNN, variant="mine")
    assert replaced.status == "done"
    assert read_record(replaced.path).protocol["image_size_override"] == 24


def test_an_evaluator_that_changes_its_options_dict_still_resumes(results_dir, tiny_encoder, mini_synthderm, monkeypatch):
    """The record holds the protocol planned before the run, so the next plan matches it."""
    spec = EVALUATORS.get("knn")
    real = spec.run

    def mutating(context, options):
        options["ks"] = "changed in place"
        return real(context, {**options, "ks": [5]})
    monkeypatch.setattr(spec, "run", mutating)
    assert _knn(_runner(results_dir), overrides=KNN).status == "done"
    assert _knn(_runner(results_dir), overrides=KNN).status == "skipped"


def _csv_dataset(folder: Path, shade: int) -> Path:
    folder.mkdir()
    rows = ["image,label"]
    for i in range(24):
        Image.fromarray(np.full((8, 8, 3), (i * 9 + shade) % 256, dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,{'ab'[i % 2]}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "labels.csv"


def test_two_user_csvs_never_share_a_record(results_dir, tiny_encoder, tmp_path):
    a, b = _csv_dataset(tmp_path / "a", 0), _csv_dataset(tmp_path / "b", 5)
    (tmp_path / "b" / "0.png").write_bytes((tmp_path / "b" / "0.png").read_bytes() + b"\0" * 7)  # other files
    first = _knn_csv(_runner(results_dir, roots={"csv": a}))
    second = _knn_csv(_runner(results_dir, roots={"csv": b}))
    assert first.status == second.status == "done"
    assert first.record.identity.dataset.startswith("csv-") and first.record.identity.dataset != second.record.identity.dataset
    assert _knn_csv(_runner(results_dir, roots={"csv": a})).status == "skipped"
    # a name chosen by the user is kept; other files under that name are refused, naming the manifest
    named = {"csv": {"name": "mine"}}
    assert _knn_csv(_runner(results_dir, roots={"csv": a}, dataset_options=named)).record.identity.dataset == "mine"
    with pytest.raises(RecordConflictError, match="dataset.manifest_sha256"):
        _knn_csv(_runner(results_dir, roots={"csv": b}, dataset_options=named))


def test_dry_run_says_run_skip_recompute_refuse_and_writes_nothing(results_dir, tiny_encoder, mini_synthderm, tmp_path):
    from benchmark.testing import tiny_encoder_spec
    from pretrained.registry import ENCODERS
    others = [tiny_encoder_spec(name=f"tiny-cnn-{c}", seed=i) for i, c in enumerate("bcd", 1)]
    for spec in others:
        ENCODERS.add(spec.name, spec, origin="test")
    try:
        args = ["benchmark", "--dataset", "synthderm-mini", "--evaluator", "knn", "--no-cache", "--image-size", "24",
                "--results", str(results_dir)]
        models = [a for name in ("tiny-cnn", "tiny-cnn-b", "tiny-cnn-c", "tiny-cnn-d") for a in ("--model", name)]
        fresh = tmp_path / "never-made"
        dry = CliRunner().invoke(cli, [*args[:-1], str(fresh), *models, "--dry-run"])
        assert dry.exit_code == 0, dry.output
        assert dry.output.count("[run] knn/default-24px") == 4 and not fresh.exists()
        runner = _runner(results_dir, image_size=24)
        for name in ("tiny-cnn", "tiny-cnn-b", "tiny-cnn-c"):
            runner.run(Cell(name, "synthderm-mini", "knn"))
        (results_dir / "records" / "knn" / "synthderm-mini" / "tiny-cnn-b__default-24px.json").write_text("[]")
        path = results_dir / "records" / "knn" / "synthderm-mini" / "tiny-cnn-c__default-24px.json"
        record = json.loads(path.read_text())
        record["protocol"]["dataset"]["manifest_sha256"] = "0" * 64  # as if made on other files
        path.write_text(json.dumps(record))
        before = sorted(p.name for p in results_dir.rglob("*"))
        dry = CliRunner().invoke(cli, [*args, *models, "--dry-run"])
        assert dry.exit_code == 0, dry.output
        lines = [line for line in dry.output.splitlines() if line.startswith("[")]
        assert [line.split("]")[0][1:] for line in lines] == ["skip", "recompute", "refuse", "run"]
        assert "record unreadable (a record is a JSON object, this file holds a list)" in lines[1]
        assert "dataset.manifest_sha256: 000000000000 ->" in lines[2] and "--overwrite" in lines[2]
        assert sorted(p.name for p in results_dir.rglob("*")) == before  # a dry run writes nothing
        # a real run refuses before computing anything (one line: what differs, how to fix)
        refused = CliRunner().invoke(cli, [*args, *models])
        assert refused.exit_code == 2 and "made under another protocol" in refused.output
        assert sorted(p.name for p in results_dir.rglob("*")) == before
    finally:
        for spec in others:
            ENCODERS.remove(spec.name)
