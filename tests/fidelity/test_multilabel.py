"""Multi-label (ChestMNIST): metrics as MedMNIST's evaluator, kNN, fine-tune, medmnist-v2, and clear refusals."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import accuracy_score, roc_auc_score

from benchmark.metrics import (evaluate_multilabel_with_ci, evaluate_scores, multilabel_metrics, multilabel_per_label,
                               subgroup_metrics)
from benchmark.runner import Cell, Runner, RunSettings
from datasets.medmnist_synthetic import write_medmnist_npz
from evaluators import medmnist_v2
from evaluators.base import ExtractionSettings
from evaluators.knn import knn_finding_scores
from evaluators.medmnist_v2 import DeviceImages, half_normalize, train_one_seed
from tests.fidelity.test_reproduce_all import tiny_network

CHEST = "medmnist:chestmnist"


def medmnist_get_auc_acc(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, float]:
    """MedMNIST's ``getAUC``/``getACC`` for task 'multi-label, binary-class' (medmnist/evaluator.py), restated."""
    auc = sum(roc_auc_score(y_true[:, i], y_score[:, i]) for i in range(y_score.shape[1])) / y_score.shape[1]
    y_pre = y_score > 0.5
    acc = sum(accuracy_score(y_true[:, i], y_pre[:, i]) for i in range(y_true.shape[1])) / y_true.shape[1]
    return auc, acc


def test_metrics_equal_medmnists_evaluator_with_ties_and_the_threshold():
    rng = np.random.default_rng(0)
    y = (rng.random((300, 14)) < 0.25).astype(np.uint8)
    scores = np.round(np.clip(0.35 * y + 0.65 * rng.random((300, 14)), 0, 1), 2)  # many tied scores
    scores[:20, :] = 0.5  # exactly at the threshold: predicted negative (strict >, as MedMNIST)
    ours = multilabel_metrics(y, scores)
    auc, acc = medmnist_get_auc_acc(y, scores)
    assert ours["auroc"] == pytest.approx(auc, abs=1e-12) and ours["accuracy"] == pytest.approx(acc, abs=1e-12)
    per = multilabel_per_label(y, scores)
    assert per["auroc"][3] == pytest.approx(roc_auc_score(y[:, 3], scores[:, 3]))
    first = evaluate_multilabel_with_ci(y, scores, n_boot=200, seed=3)
    assert first == evaluate_multilabel_with_ci(y, scores, n_boot=200, seed=3)  # seeded
    for name in ("auroc", "accuracy"):
        lo, hi = first[name]["ci"]
        assert lo < first[name]["value"] < hi and hi - lo < 0.1
    assert evaluate_scores(y, scores, n_boot=200, seed=3) == first  # a label matrix dispatches to multi-label
    groups = {"sex": np.array(["f", "m"] * 150, dtype=object)}
    by_sex = subgroup_metrics(y, scores, groups, n_boot=50)["sex"]
    assert by_sex["f"]["n"] == 150
    assert by_sex["f"]["auroc"]["value"] == pytest.approx(multilabel_metrics(y[::2], scores[::2])["auroc"])


def test_a_finding_with_one_class_is_left_out_of_the_auc_and_bad_inputs_are_refused(caplog):
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    scores = np.array([[0.9, 0.2], [0.1, 0.3], [0.8, 0.1], [0.4, 0.7]])
    with caplog.at_level(logging.WARNING):
        assert multilabel_metrics(y, scores)["auroc"] == 1.0  # finding 1 has no positive
    assert "one class" in caplog.text
    assert math.isnan(multilabel_per_label(y, scores)["auroc"][1])
    with pytest.raises(ValueError, match="one shape"):
        multilabel_metrics(y, scores[:, :1])
    with pytest.raises(ValueError, match="probabilities in"):
        multilabel_metrics(y, scores * 3)
    with pytest.raises(ValueError, match="only 0 and 1"):
        multilabel_metrics(y * 2, scores)


def test_knn_finding_scores_match_a_direct_reference():
    rng = np.random.default_rng(1)
    train_x, query_x = rng.normal(size=(40, 6)).astype(np.float32), rng.normal(size=(9, 6)).astype(np.float32)
    targets = (rng.random((40, 5)) < 0.4).astype(np.uint8)
    out = knn_finding_scores(torch.from_numpy(train_x), torch.from_numpy(targets), torch.from_numpy(query_x),
                             [1, 7], 0.07, chunk_size=4)
    train = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    for k in (1, 7):
        for i, q in enumerate(query_x):
            sim = train @ (q / np.linalg.norm(q))
            top = np.argsort(-sim)[:k]
            weights = np.exp(sim[top] / 0.07)
            np.testing.assert_allclose(out[k][i], weights @ targets[top] / weights.sum(), atol=1e-6)
    assert np.array_equal(out[1], targets[np.argmax(query_x / np.linalg.norm(query_x, axis=1, keepdims=True)
                                                    @ train.T, axis=1)])


@pytest.fixture
def chest_settings(tmp_path: Path, tiny_encoder):
    """RunSettings whose medmnist:chestmnist root is a synthetic ChestMNIST-format file (labels (N, 14))."""
    path = write_medmnist_npz(tmp_path / "data", "chestmnist", (32, 16, 16))
    return RunSettings(results_dir=tmp_path / "results", roots={CHEST: path}, overwrite=True,
                       extraction=ExtractionSettings(device=torch.device("cpu"), cache_dir=tmp_path / "cache",
                                                     num_workers=0))


def test_knn_and_finetune_run_multilabel_through_the_runner(chest_settings):
    runner = Runner(chest_settings)
    knn = runner.run(Cell("tiny-cnn", CHEST, "knn", overrides={"ks": [5], "primary_k": 5, "n_boot": 50})).record
    assert knn.primary_metric == "auroc" and set(knn.metrics) == {"auroc", "accuracy"}
    assert knn.protocol["resolved"]["multilabel"].startswith("one-vs-rest")
    record = runner.run(Cell("tiny-cnn", CHEST, "finetune", preset="quick",
                             overrides={"balanced": False, "steps": 4, "eval_every": 2, "n_boot": 50})).record
    assert record.protocol["resolved"]["loss"] == "bce-with-logits" and record.protocol["resolved"]["monitor"] == "auroc"
    saved = np.load(record.extra["predictions"])
    assert saved["probabilities"].shape == (16, 14) and saved["labels"].shape == (16, 14)
    assert not np.allclose(saved["probabilities"].sum(1), 1.0)  # sigmoid per finding, not a softmax
    auc, acc = medmnist_get_auc_acc(saved["labels"], saved["probabilities"])
    assert record.metrics["auroc"]["value"] == pytest.approx(auc) and record.metrics["accuracy"]["value"] == pytest.approx(acc)
    with pytest.raises(ValueError, match="balanced=false"):
        runner.run(Cell("tiny-cnn", CHEST, "finetune", preset="quick"))


def test_linear_is_one_vs_rest_per_finding(tmp_path: Path):
    """Finding k is feature k's sign: each finding's own probe is perfect, a mixed-up column would be at chance."""
    from benchmark.features import Features
    from evaluators.linear import LINEAR_DEFAULTS, check_linear_options, multilabel_linear_probe
    rng = np.random.default_rng(0)

    def split(n):
        y = (rng.random((n, 4)) < 0.4).astype(np.uint8)
        x = np.concatenate([(2.0 * y - 1) * 3 + rng.normal(size=(n, 4)), rng.normal(size=(n, 4))], axis=1)
        ids = np.array([f"i{k}" for k in range(n)])
        return Features(x.astype(np.float32), y, ids, ids, np.arange(n), {})
    train, val, test = split(80), split(40), split(60)
    test.y[:, 3] = 0  # a finding with one class in test: left out of the AUC, still fitted
    options = check_linear_options({**LINEAR_DEFAULTS, "wd_steps": 5})
    resolved, extra, scores = multilabel_linear_probe(train, val, test, ["a", "b", "c", "d"], options,
                                                      torch.device("cpu"))
    assert scores.shape == (60, 4) and set(resolved["C"]) == {"a", "b", "c", "d"}
    assert resolved["selection_metric"] == "auroc" and [row["finding"] for row in extra["per_finding"]] == list("abcd")
    for k in range(3):
        assert roc_auc_score(test.y[:, k], scores[:, k]) > 0.99
    assert multilabel_metrics(test.y, scores)["auroc"] > 0.99
    val.y[:, 2] = 1  # one class in val: C cannot be chosen, the finding is scored by its train prevalence
    resolved, _, scores = multilabel_linear_probe(train, val, test, ["a", "b", "c", "d"], options, torch.device("cpu"))
    assert resolved["skipped_findings"] == ["c"] and np.allclose(scores[:, 2], train.y[:, 2].mean())
    with pytest.raises(ValueError, match="protocol=parity is ssl-transfer's single-label probe"):
        multilabel_linear_probe(train, val, test, list("abcd"), check_linear_options({**options, "protocol": "parity"}),
                                torch.device("cpu"))


def test_linear_runs_multilabel_through_the_runner(chest_settings):
    record = Runner(chest_settings).run(Cell("tiny-cnn", CHEST, "linear", overrides={"wd_steps": 3, "n_boot": 50})).record
    assert record.primary_metric == "auroc" and set(record.metrics) == {"auroc", "accuracy"}
    assert record.protocol["resolved"]["multilabel"].startswith("one-vs-rest") and len(record.extra["per_finding"]) == 14


@pytest.mark.parametrize("evaluator", ["fewshot", "kshot-linear", "multiview-invariance"])
def test_single_label_evaluators_refuse_multilabel_data_in_one_line(chest_settings, evaluator):
    with pytest.raises(ValueError, match=f"'{evaluator}' needs one class per image and 'medmnist:chestmnist' is "
                                         f"multi-label \\(14 findings\\); use .*knn.*task=<finding>") as error:
        Runner(chest_settings).run(Cell("tiny-cnn", CHEST, evaluator))
    assert "\n" not in str(error.value)
    assert not (chest_settings.extraction.cache_dir / "features").exists()  # refused before any extraction


def test_medmnist_v2_trains_multilabel_with_bce():
    """With lr 0 and a zero-initialised last layer every logit stays 0: BCE = log 2 (cross-entropy would be log 14)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(24, 28, 28)).astype(np.uint8)
    labels = torch.as_tensor((rng.random((24, 14)) < 0.5).astype(np.float32))
    labels[12], labels[13] = 1, 0
    rows = {"train": torch.arange(0, 12), "val": torch.arange(12, 18), "test": torch.arange(18, 24)}

    def build():
        model = tiny_network("resnet18", 1, 14)
        torch.nn.init.zeros_(model[-1].weight), torch.nn.init.zeros_(model[-1].bias)
        return model
    options = {**medmnist_v2.MEDMNIST_V2_DEFAULTS, "epochs": 1, "batch_size": 5, "lr": 0.0}
    run = train_one_seed(build, DeviceImages(images, torch.device("cpu"), 1, 28, half_normalize), rows, labels, 14,
                         options, seed=0)
    assert run["curve"][0]["train_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert run["test_proba"].shape == (6, 14) and np.allclose(run["test_proba"], 0.5)


def test_reproduce_chestmnist_compares_with_the_multilabel_row(tmp_path: Path, monkeypatch):
    from cli import cli
    monkeypatch.setattr(medmnist_v2, "small_input_resnet", tiny_network)
    write_medmnist_npz(tmp_path / "data", "chestmnist", (24, 12, 12))
    result = CliRunner().invoke(cli, ["reproduce", "medmnist-v2", "-d", CHEST, "--root", str(tmp_path / "data"),
                                      "--seeds", "2", "--epochs", "1", "--device", "cpu",
                                      "--results", str(tmp_path / "results")])
    assert result.exit_code == 0, result.output
    assert "0.768" in result.output and "0.947*" in result.output  # ChestMNIST R18 (28) ACC: one source only
    assert "0.778 Google AutoML Vision" in result.output
    assert "chestmnist.npz is not the published file (md5 " in result.output  # reported, not hidden
    path = next((tmp_path / "results").rglob("resnet18-random__size28-seeds2-epochs1.json"))
    record = json.loads(path.read_text())
    assert record["protocol"]["resolved"]["loss"] == "bce-with-logits"
    per_finding = record["extra"]["per_seed"][0]["per_finding"]
    assert len(per_finding["auroc"]) == 14 and "hernia" in per_finding["accuracy"]
    assert record["metrics"]["auroc"]["per_seed"][0] == pytest.approx(np.mean(list(per_finding["auroc"].values())))
