"""`cli.py pretrain` end to end, and the main job's built-in recipe, with a tiny CNN on a small synthderm."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import cli
from pretrained.local_registry import load_local_entries, remove_local_encoder
from pretrained.registry import ENCODERS

TINY = ["--dataset", "synthderm-mini", "--init", "tiny-cnn", "--epochs", "1", "--image-size", "24",
        "--batch-size", "32", "--projection-dim", "8", "--device", "cpu", "--workers", "0"]
LINEAR = ["-o", "wd_steps=3", "-o", "n_boot=20", "--device", "cpu", "--workers", "0", "--batch-size", "64"]


@pytest.fixture
def registered():
    names = []
    yield names
    for name in names:
        if name in load_local_entries():
            remove_local_encoder(name)


def test_pretrain_registers_an_encoder_that_linear_can_use(tiny_encoder, mini_synthderm, results_dir, registered):
    runner = CliRunner()
    registered.append("tiny-simclr")
    result = runner.invoke(cli.cli, ["pretrain", "simclr", *TINY, "--name", "tiny-simclr", "--results", str(results_dir)])
    assert result.exit_code == 0, result.output
    assert "registered encoder 'tiny-simclr'" in result.output
    assert ENCODERS.get("tiny-simclr").kind == "in-domain"

    result = runner.invoke(cli.cli, ["linear", "--model", "tiny-simclr", "--dataset", "synthderm-mini",
                                     "--results", str(results_dir), *LINEAR])
    assert result.exit_code == 0, result.output
    record = json.loads(next((results_dir / "records" / "linear").rglob("tiny-simclr*.json")).read_text())
    pretraining = record["provenance"]["encoder"]["pretraining"]
    assert pretraining["method"] == "simclr" and pretraining["init"] == "tiny-cnn" and pretraining["epochs"] == 1
    assert pretraining["dataset"] == "synthderm-mini" and len(pretraining["dataset_manifest_sha256"]) == 64
    assert pretraining["checkpoint_sha256"] == record["provenance"]["encoder"]["weights_sha256"]
    # the pretraining split is the evaluators' split: its train images only
    assert pretraining["split"] == "train" and pretraining["n_images"] == record["protocol"]["splits"]["sizes"]["train"]

    # rerunning is idempotent; the same name with another configuration is refused
    again = runner.invoke(cli.cli, ["pretrain", "simclr", *TINY, "--name", "tiny-simclr", "--results", str(results_dir)])
    assert again.exit_code == 0 and "resumed after epoch 1" in again.output
    other = runner.invoke(cli.cli, ["pretrain", "supcon", *TINY, "--name", "tiny-simclr", "--results", str(results_dir)])
    assert other.exit_code != 0 and "another pretraining configuration" in other.output
    taken = runner.invoke(cli.cli, ["pretrain", "simclr", *TINY, "--name", "resnet18-random", "--results", str(results_dir)])
    assert taken.exit_code != 0 and "already taken" in taken.output
    bad = runner.invoke(cli.cli, ["pretrain", "simclr", *TINY, "--name", "Bad Name", "--results", str(results_dir)])
    assert bad.exit_code == 2 and "--name" in bad.output and "lowercase" in bad.output
    assert not (results_dir.parent / "Bad Name").exists() and "epoch" not in bad.output  # refused before training
    unknown = runner.invoke(cli.cli, ["pretrain", "simclr", *TINY[:2], "--init", "tiny-cnm", *TINY[4:], "--name", "x",
                                      "--results", str(results_dir)])
    assert unknown.exit_code == 2 and "--init" in unknown.output and "tiny-cnn" in unknown.output


def test_main_job_makes_its_recipe_encoder_once(tiny_encoder, mini_synthderm, results_dir):
    from benchmark.main_job import plan_cells, prepare_recipe_encoders, recipe_exclusions
    from benchmark.runner import Runner, RunSettings
    from evaluators.base import ExtractionSettings
    from pretrained.ssl import recipes
    from pretrained.ssl.trainer import PretrainConfig
    import torch
    config = PretrainConfig(method="simclr", dataset="synthderm-mini", init="tiny-cnn", epochs=1, image_size=24,
                            batch_size=32, projection_dim=8)
    recipes.register_recipe("tiny-recipe", config, "tiny-cnn", 16)
    try:
        assert not ENCODERS.get("tiny-recipe").status().present
        settings = RunSettings(results_dir=results_dir, extraction=ExtractionSettings(torch.device("cpu"), None))
        lines = []
        assert recipe_exclusions(["tiny-recipe"], Runner(settings), report=lines.append) == []
        prepare_recipe_encoders(["tiny-recipe"], Runner(settings), dry_run=True, report=lines.append)
        assert lines and lines[0].startswith("[todo] pretrain tiny-recipe")
        prepare_recipe_encoders(["tiny-recipe"], Runner(settings), report=lines.append)
        assert any("epoch 1/1" in line for line in lines)
        assert ENCODERS.get("tiny-recipe").status().present
        checkpoint = recipes.pretrained_dir("tiny-recipe") / "encoder.pt"
        stamp = checkpoint.stat().st_mtime_ns
        lines.clear()
        prepare_recipe_encoders(["tiny-recipe"], Runner(settings), report=lines.append)
        assert lines == [] and checkpoint.stat().st_mtime_ns == stamp  # made once
        encoder = ENCODERS.get("tiny-recipe").build(None)
        assert encoder.provenance["pretraining"]["split_seed"] == 0 and encoder.preprocessing.input_size == 24
        assert [c.encoder for c in plan_cells(["tiny-recipe"], ["synthderm-mini"], ["linear"], None)] == ["tiny-recipe"]
        # another split seed could put pretraining images into the test split: the recipe is left out
        other = RunSettings(results_dir=results_dir, extraction=ExtractionSettings(torch.device("cpu"), None), seed=1)
        assert recipe_exclusions(["tiny-recipe"], Runner(other), report=lines.append) == ["tiny-recipe"]
        assert "leaving out tiny-recipe" in lines[-1]
    finally:
        ENCODERS.remove("tiny-recipe")
        recipes.RECIPES.pop("tiny-recipe")
