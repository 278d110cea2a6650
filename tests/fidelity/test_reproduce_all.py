"""`reproduce medmnist-v2 --all`: file discovery (both layouts), the run plan, the fidelity report."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from benchmark.reproduce import discover_medmnist, plan_medmnist_v2
from datasets.medmnist_synthetic import write_medmnist_npz
from evaluators import medmnist_v2


def tiny_network(arch: str, in_channels: int, n_outputs: int) -> torch.nn.Module:
    """Stands in for the 28-px ResNet where a test checks orchestration, not the network (CPU time)."""
    return torch.nn.Sequential(torch.nn.Conv2d(in_channels, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, n_outputs))


@pytest.fixture
def tiny_resnet(monkeypatch):
    monkeypatch.setattr(medmnist_v2, "small_input_resnet", tiny_network)


def test_discovery_finds_both_layouts_and_the_plan_follows_the_paper(tmp_path: Path):
    write_medmnist_npz(tmp_path, "breastmnist", (4, 2, 2))
    write_medmnist_npz(tmp_path, "breastmnist", (4, 2, 2), name="breastmnist_28.npz")  # same data, other name
    write_medmnist_npz(tmp_path, "dermamnist", (7, 7, 7), size=224)
    write_medmnist_npz(tmp_path, "pathmnist", (9, 9, 9), size=64)
    (tmp_path / "notes.npz").write_bytes(b"x")
    (tmp_path / "fakemnist.npz").write_bytes(b"x")
    found = [(f.flag, f.size, f.path.name) for f in discover_medmnist(tmp_path)]
    assert found == [("pathmnist", 64, "pathmnist_64.npz"), ("dermamnist", 224, "dermamnist_224.npz"),
                     ("breastmnist", 28, "breastmnist.npz")]
    runs, left_out = plan_medmnist_v2(discover_medmnist(tmp_path), ("resnet18", "resnet50"), (28, 224))
    planned = [(r.flag, r.arch, r.size, r.source.size) for r in runs]
    # 224 models train on the 28-px file resized (the paper); without it, on the native 224 file
    assert planned == [("dermamnist", "resnet18", 224, 224), ("dermamnist", "resnet50", 224, 224),
                       ("breastmnist", "resnet18", 28, 28), ("breastmnist", "resnet18", 224, 28),
                       ("breastmnist", "resnet50", 28, 28), ("breastmnist", "resnet50", 224, 28)]
    reasons = {(row["dataset"], row["why"].split(" ")[0]) for row in left_out}
    assert ("pathmnist", "no") in reasons and ("dermamnist", "ResNet-18") in reasons


def test_reproduce_all_writes_the_fidelity_report(tmp_path: Path, monkeypatch, tiny_resnet):
    from cli import cli
    monkeypatch.setenv("MEDTRANSFER_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    write_medmnist_npz(data, "breastmnist", (16, 8, 8), flat_labels=True)  # 1-D labels, as the shared copy
    write_medmnist_npz(data, "dermamnist", (14, 7, 7))  # RGB, labels (N, 1)
    np.savez(data / "octmnist.npz", train_images=np.zeros((2, 28, 28), np.uint8))  # broken: arrays missing
    report = tmp_path / "out" / "fidelity.md"
    result = CliRunner().invoke(cli, ["reproduce", "medmnist-v2", "--all", "--root", str(data), "--seeds", "1",
                                      "--epochs", "1", "--device", "cpu", "--results", str(tmp_path / "results"),
                                      "--report", str(report)])
    assert result.exit_code == 1, result.output
    assert "1 set(s) could not run: octmnist" in result.output  # the others still ran and were reported
    frame = pd.read_csv(report.with_suffix(".csv"))
    done = frame[frame["status"] == "done"]
    assert sorted(set(done["dataset"])) == ["breastmnist", "dermamnist"]
    assert set(done["metric"]) == {"AUC", "ACC"} and set(done["md5"]) == {"mismatch"}
    breast_auc = done[(done["dataset"] == "breastmnist") & (done["metric"] == "AUC")].iloc[0]
    assert breast_auc["published"] == 0.901 and breast_auc["best_other_model"] == "Google AutoML Vision"
    assert breast_auc["difference"] == breast_auc["ours_mean"] - 0.901
    assert breast_auc["verdict"] in ("reproduced", "lower", "higher") and breast_auc["file"] == "breastmnist.npz"
    assert frame[frame["dataset"] == "octmnist"]["verdict"].tolist() == ["error"]
    text = report.read_text()
    assert "## Wall time per set" in text and "## Verdicts" in text and "lacks arrays" in text
    assert "0.917 ± " not in text and "| dermamnist  | ResNet-18 (28)" in text
    # a second run reuses the records (status skipped), and the report is rewritten
    again = CliRunner().invoke(cli, ["reproduce", "medmnist-v2", "--all", "--root", str(data), "--seeds", "1",
                                     "--epochs", "1", "--device", "cpu", "--results", str(tmp_path / "results"),
                                     "--report", str(report)])
    assert again.exit_code == 1 and set(pd.read_csv(report.with_suffix(".csv")).dropna(subset=["record"])["status"]) == {"skipped"}


def test_reproduce_usage_errors(tmp_path: Path):
    from cli import cli
    runner = CliRunner()
    assert "give --dataset" in runner.invoke(cli, ["reproduce", "medmnist-v2"]).output
    assert "--all needs --root" in runner.invoke(cli, ["reproduce", "medmnist-v2", "--all"]).output
    both = runner.invoke(cli, ["reproduce", "medmnist-v2", "--all", "--root", str(tmp_path), "-d", "medmnist:breastmnist"])
    assert both.exit_code == 2 and "leave out --dataset" in both.output
    empty = runner.invoke(cli, ["reproduce", "medmnist-v2", "--all", "--root", str(tmp_path), "--device", "cpu",
                                "--results", str(tmp_path / "r")])
    assert empty.exit_code == 1 and "no MedMNIST .npz file" in empty.output


SHARED_MEDMNIST = Path(os.environ.get("MEDTRANSFER_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared"
                                      / "data")) / "medmnist"


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED_MEDMNIST / "breastmnist.npz").is_file(), reason="../shared/data/medmnist is absent")
def test_the_shared_breastmnist_is_found_planned_and_its_md5_mismatch_reported(tmp_path: Path, monkeypatch):
    from datasets.medmnist import build_medmnist
    monkeypatch.setenv("MEDTRANSFER_CACHE", str(tmp_path / "cache"))  # the md5 memo goes here, not into ../shared
    (found,) = discover_medmnist(SHARED_MEDMNIST)
    assert (found.flag, found.size) == ("breastmnist", 28)
    runs, left_out = plan_medmnist_v2([found], ("resnet18",), (28, 224))
    assert [(r.size, r.source.size) for r in runs] == [(28, 28), (224, 28)] and left_out == []
    dataset = build_medmnist("breastmnist", found.path, {})
    assert dataset.info["n_samples"] == {"train": 546, "val": 78, "test": 156}  # the published split sizes
    assert dataset.info["md5"]["status"] == "mismatch"  # a re-saved copy (1-D labels): reported, not hidden
