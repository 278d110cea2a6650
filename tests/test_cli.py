"""End-to-end CLI behaviour: errors users hit, a linear run, and a benchmark that resumes after a kill."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from benchmark.testing import tiny_encoder_spec
from cli import cli
from evaluators.registry import EVALUATORS
from pretrained.registry import ENCODERS

MINI = ["--dataset", "synthderm-mini", "--no-cache"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_help_everywhere():
    """Every command and subcommand of the CLI answers --help."""
    import click

    def walk(command: click.Command, path: list[str]):
        yield path
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])
    paths = list(walk(cli, []))
    assert ["pretrain", "simclr"] in paths and ["models", "add"] in paths
    for command in paths:
        result = invoke(*command, "--help")
        assert result.exit_code == 0, (command, result.output)
        assert "Usage:" in result.output


def test_unknown_model_gets_suggestions(results_dir):
    result = invoke("linear", "--model", "resnet18-randm", "--dataset", "synthderm", "--results", str(results_dir))
    assert result.exit_code == 2
    assert "unknown encoder 'resnet18-randm'" in result.output and "resnet18-random" in result.output


def test_unknown_dataset_gets_suggestions(results_dir):
    result = invoke("linear", "--model", "resnet18-random", "--dataset", "synthdrm", "--results", str(results_dir))
    assert result.exit_code == 2 and "Did you mean: synthderm" in result.output


def test_missing_weights_message_names_file_places_and_url(results_dir, mini_synthderm):
    result = invoke("linear", "--model", "resnet18-supervised", *MINI, "--results", str(results_dir))
    assert result.exit_code == 1
    assert "weights file 'resnet18-f37072fd.pth' not found" in result.output
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in result.output
    assert "Traceback" not in result.output


def test_linear_writes_record(results_dir, tiny_encoder, mini_synthderm):
    result = invoke("linear", "--model", "tiny-cnn", *MINI, "--results", str(results_dir))
    assert result.exit_code == 0, result.output
    assert "linear | tiny-cnn | synthderm-mini | balanced_accuracy =" in result.output
    record = json.loads(next((results_dir / "records" / "linear").rglob("*.json")).read_text())
    assert record["identity"] == {"encoder": "tiny-cnn", "dataset": "synthderm-mini", "evaluator": "linear",
                                  "variant": "default"}
    assert record["provenance"]["encoder"]["weights_sha256"]
    assert set(record["metrics"]) >= {"accuracy", "balanced_accuracy", "auroc", "f1_macro"}
    assert record["subgroups"].keys() >= {"fitzpatrick"}
    again = invoke("linear", "--model", "tiny-cnn", *MINI, "--results", str(results_dir))
    assert "skipped (record exists" in again.output
    assert list((results_dir / "splits").glob("synthderm-mini__*.csv"))


def test_a_record_with_other_options_under_the_same_name_is_refused(results_dir, tiny_encoder, mini_synthderm):
    from benchmark.runner import Cell, Runner, RunSettings
    from evaluators.base import ExtractionSettings
    settings = RunSettings(results_dir=results_dir, extraction=ExtractionSettings(torch.device("cpu"), None))
    Runner(settings).run(Cell("tiny-cnn", "synthderm-mini", "knn", overrides={"ks": [5], "primary_k": 5}, variant="mine"))
    assert Runner(settings).run(Cell("tiny-cnn", "synthderm-mini", "knn", overrides={"ks": [5], "primary_k": 5}, variant="mine")).status == "skipped"
    with pytest.raises(ValueError, match=r"another protocol \(options.ks: \[5\] -> \[7\]; options.primary_k: 5 -> 7\).*--overwrite"):
        Runner(settings).run(Cell("tiny-cnn", "synthderm-mini", "knn", overrides={"ks": [7], "primary_k": 7}, variant="mine"))


def test_unreadable_image_and_malformed_csv(tmp_path, tiny_encoder):
    images = tmp_path / "imgs"
    images.mkdir()
    rows = ["image,label,group"]
    for i in range(30):
        Image.fromarray(np.full((16, 16, 3), i * 8, dtype=np.uint8)).save(images / f"{i}.png")
        rows.append(f"imgs/{i}.png,{'ab'[i % 2]},p{i}")
    (images / "7.png").write_bytes(b"truncated")
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    result = invoke("linear", "--model", "tiny-cnn", "--dataset", "csv", "--root", str(csv), "--no-cache",
                    "--results", str(tmp_path / "r"), "--workers", "0")
    assert result.exit_code == 1 and "cannot read image" in result.output and "7.png" in result.output
    csv.write_text("path,diagnosis\nimgs/1.png,a\n")
    result = invoke("linear", "--model", "tiny-cnn", "--dataset", "csv", "--root", str(csv), "--results", str(tmp_path / "r"))
    assert result.exit_code == 1 and "lacks column(s) ['image', 'label']" in result.output


def test_bad_options_are_usage_errors(results_dir, tiny_encoder, mini_synthderm):
    result = invoke("linear", "--model", "tiny-cnn", *MINI, "-o", "no_such_option=1", "--results", str(results_dir))
    assert result.exit_code == 2 and "has no option 'no_such_option'" in result.output
    result = invoke("linear", "--model", "tiny-cnn", *MINI, "-o", "oops", "--results", str(results_dir))
    assert result.exit_code == 2 and "KEY=VALUE" in result.output


def test_benchmark_killed_midway_redoes_no_finished_cell(results_dir, tiny_encoder, mini_synthderm, monkeypatch):
    second = tiny_encoder_spec(name="tiny-cnn-b", seed=1)
    ENCODERS.add(second.name, second, origin="test")
    try:
        spec = EVALUATORS.get("linear")
        real_run, calls = spec.run, []

        def killed_on_second_cell(context, options):
            calls.append(context.encoder_spec.name)
            if len(calls) == 2:
                raise KeyboardInterrupt  # what a kill looks like from inside
            return real_run(context, options)

        args = ["benchmark", "--model", "tiny-cnn", "--model", "tiny-cnn-b", *MINI[:2], "--evaluator", "linear",
                "--results", str(results_dir), "--no-cache"]
        monkeypatch.setattr(spec, "run", killed_on_second_cell)
        CliRunner().invoke(cli, args)
        done = list((results_dir / "records").rglob("*.json"))
        assert [p.stem.split("__")[0] for p in done] == ["tiny-cnn"]
        stamp = done[0].stat().st_mtime_ns
        monkeypatch.setattr(spec, "run", real_run)
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert "skipped (record exists" in result.output
        assert done[0].stat().st_mtime_ns == stamp
        assert sorted(p.stem.split("__")[0] for p in (results_dir / "records").rglob("*.json")) == ["tiny-cnn", "tiny-cnn-b"]
        assert (results_dir / "leaderboard.md").is_file()
        assert "tiny-cnn-b" in (results_dir / "leaderboard.md").read_text()
        assert (results_dir / "report" / "index.html").is_file()  # the main job writes the report too
    finally:
        ENCODERS.remove(second.name)


def test_leaderboard_reports_corrupt_record(results_dir, tiny_encoder, mini_synthderm):
    invoke("linear", "--model", "tiny-cnn", *MINI, "--results", str(results_dir))
    (results_dir / "records" / "linear" / "synthderm-mini" / "broken.json").write_text("{not json")
    result = CliRunner(mix_stderr=False).invoke(cli, ["leaderboard", "--results", str(results_dir)]) \
        if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner().invoke(cli, ["leaderboard", "--results", str(results_dir)])
    assert result.exit_code == 0
    assert "tiny-cnn" in result.output
    assert "broken.json" in (result.stderr if hasattr(result, "stderr") and result.stderr else result.output)
