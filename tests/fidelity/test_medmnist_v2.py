"""medmnist-v2 preset: tiny generated BreastMNIST-format npz, CPU, a few epochs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import accuracy_score, roc_auc_score

from benchmark.metrics import classification_metrics
from benchmark.references import compare, references_for
from evaluators import medmnist_v2
from evaluators.medmnist_v2 import DeviceImages, half_normalize, small_input_resnet, train_one_seed


def write_breastmnist(folder: Path, sizes=(40, 10, 20), seed: int = 0, label_shape: str = "column") -> Path:
    """A BreastMNIST-format npz: uint8 [N, 28, 28] images, labels [N, 1] (or [N]); class 1 has a bright square."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        labels = np.arange(n) % 2
        images = rng.integers(0, 100, size=(n, 28, 28)).astype(np.uint8)
        images[labels == 1, 8:20, 8:20] += 120
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels.reshape(-1, 1) if label_shape == "column" else labels
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "breastmnist.npz"
    np.savez(path, **arrays)
    return path


def test_reproduce_cli_runs_and_compares(tmp_path, monkeypatch):
    from cli import cli
    monkeypatch.setenv("MEDTRANSFER_CACHE", str(tmp_path / "cache"))
    write_breastmnist(tmp_path / "data", sizes=(16, 8, 8), label_shape="flat")
    result = CliRunner().invoke(cli, ["reproduce", "medmnist-v2", "--dataset", "medmnist:breastmnist", "--root",
                                      str(tmp_path / "data"), "--seeds", "2", "--epochs", "1", "--device", "cpu",
                                      "--results", str(tmp_path / "results")])
    assert result.exit_code == 0, result.output
    assert "0.901" in result.output and "0.863" in result.output
    records = list((tmp_path / "results").rglob("*.json"))
    record = json.loads(next(p for p in records if "medmnist-v2" in str(p)).read_text())
    auc = record["metrics"]["auroc"]
    assert len(auc["per_seed"]) == 2 and auc["value"] == pytest.approx(np.mean(auc["per_seed"]))
    assert auc["sd"] == pytest.approx(np.std(auc["per_seed"], ddof=1))
    assert record["protocol"]["resolved"]["input_channels"] == 1
    assert record["protocol"]["resolved"]["n_train"] == 16 and record["protocol"]["resolved"]["n_test"] == 8
    assert record["protocol"]["options"]["lr"] == 1e-3 and record["protocol"]["options"]["batch_size"] == 128
    # the leaderboard lists the reference rows apart, marked published
    board = CliRunner().invoke(cli, ["leaderboard", "--results", str(tmp_path / "results")])
    assert "## Published references" in board.output and "published" in board.output


def test_encoder_init_arm_never_shares_the_papers_record(tmp_path, monkeypatch):
    """`--init-model resnet18-random` trains a torchvision ResNet + linear head, not the paper's network:
    its record must not be taken for the paper protocol's (it once was: same name, silently skipped)."""
    from cli import cli
    monkeypatch.setenv("MEDTRANSFER_CACHE", str(tmp_path / "cache"))
    write_breastmnist(tmp_path / "data", sizes=(16, 8, 8))
    base = ["reproduce", "medmnist-v2", "--dataset", "medmnist:breastmnist", "--root", str(tmp_path / "data"),
            "--seeds", "1", "--epochs", "1", "--device", "cpu", "--results", str(tmp_path / "results")]
    encoder_arm = CliRunner().invoke(cli, [*base, "--init-model", "resnet18-random"])
    assert encoder_arm.exit_code == 0, encoder_arm.output
    paper_arm = CliRunner().invoke(cli, base)
    assert paper_arm.exit_code == 0, paper_arm.output
    assert "skipped" not in paper_arm.output
    records = sorted(p.name for p in (tmp_path / "results").rglob("*.json") if "medmnist-v2" in str(p))
    assert records == ["resnet18-random__size28-seeds1-epochs1-init-encoder.json",
                       "resnet18-random__size28-seeds1-epochs1.json"]


def test_best_validation_weights_are_restored_not_last(monkeypatch):
    """Scripted val AUCs 0.6, 0.9, 0.7: the returned model must carry epoch 2's weights."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(24, 28, 28)).astype(np.uint8)
    labels = torch.as_tensor(np.arange(24) % 2)
    rows = {"train": torch.arange(0, 12), "val": torch.arange(12, 18), "test": torch.arange(18, 24)}
    device_images = DeviceImages(images, torch.device("cpu"), 1, 28, half_normalize)
    snapshots, scripted = [], iter([0.6, 0.9, 0.7])
    real_predict = medmnist_v2.predict_proba

    def recording_predict(model, imgs, which, *args):
        if which is rows["val"]:
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return real_predict(model, imgs, which, *args)

    monkeypatch.setattr(medmnist_v2, "predict_proba", recording_predict)
    monkeypatch.setattr(medmnist_v2, "point_metrics", lambda y, p: {"auroc": next(scripted)})
    options = {**medmnist_v2.MEDMNIST_V2_DEFAULTS, "epochs": 3, "batch_size": 8}
    tiny = lambda: torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                       torch.nn.Linear(4, 2))  # the selection logic, not the architecture, is tested
    run = train_one_seed(tiny, device_images, rows, labels, 2, options, seed=0)
    assert run["best_epoch"] == 2 and run["best_val_auroc"] == 0.9
    final = run["model"].state_dict()
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[2][k]) for k in final if final[k].is_floating_point())


def test_small_input_resnet_matches_medmnist_variant():
    model = small_input_resnet("resnet18", 1, 2)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.padding == (1, 1)
    assert model.conv1.in_channels == 1 and isinstance(model.maxpool, torch.nn.Identity)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 2)


def test_paper_auc_and_acc_definitions_match_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 50)
    logits = rng.normal(size=(50, 2)) + y[:, None] * np.array([0, 1.0])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ours = classification_metrics(y, p, 2)
    assert ours["auroc"] == pytest.approx(roc_auc_score(y, p[:, 1]))  # AUC of the positive-class score
    assert ours["accuracy"] == pytest.approx(accuracy_score(y, p[:, -1] > 0.5))  # MedMNIST's binary ACC rule
    y3 = np.arange(60) % 3
    p3 = rng.dirichlet(np.ones(3), size=60)
    ours3 = classification_metrics(y3, p3, 3)
    assert ours3["auroc"] == pytest.approx(roc_auc_score(y3, p3, multi_class="ovr", average="macro"))
    assert ours3["accuracy"] == pytest.approx(accuracy_score(y3, p3.argmax(1)))


def test_compare_and_references():
    refs = {r.metric: r.value for r in references_for("medmnist:breastmnist", "ResNet-18 (28)", "medmnist-v2")}
    assert refs == {"auroc": 0.901, "accuracy": 0.863}
    assert references_for("medmnist:breastmnist-64") == []
    inside = compare([0.898, 0.917, 0.889], 0.901)
    assert inside["within_spread"] and inside["within_tolerance"]
    outside = compare([0.80, 0.81, 0.82], 0.901)
    assert not outside["within_spread"] and not outside["within_tolerance"]
    assert outside["spread"] == pytest.approx([0.81 - 0.02, 0.81 + 0.02])
