from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from evaluators import training
from evaluators.finetune import FINETUNE_DEFAULTS, FINETUNE_PRESETS, resolve_budget, run_finetune, search_grid
from evaluators.sampling import StreamBatchSampler
from evaluators.training import TrainConfig, Trainer, Validation
from tests.evaluators.conftest import colour_dataset, image_context

TINY = dict(FINETUNE_DEFAULTS, **FINETUNE_PRESETS["quick"])
TINY.update(steps=12, batch_size=8, eval_every=4, train_size=16, eval_batch_size=32, n_boot=50, lrs=[0.05], wds=[0.0])


class _Items(Dataset):
    """(row, seed) -> (fixed random input, label)."""

    def __init__(self, n: int = 32):
        generator = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 6, generator=generator), torch.arange(n) % 2

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, item):
        row, _ = item
        return self.x[row], self.y[row]


def test_early_stopping_restores_the_best_weights_not_the_last(tmp_path):
    scores = iter([0.2, 0.9, 0.5, 0.6, 0.4])  # best at the 2nd validation; the 4th improves on the 3rd only
    snapshots = []

    def validate(model):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return Validation(loss=1.0, metrics={"accuracy": next(scores)})

    model = nn.Linear(6, 2)
    items = _Items()
    config = TrainConfig(steps=20, batch_size=4, lr=0.5, weight_decay=0.0, eval_every=2, patience=3,
                         monitor="accuracy", schedule="constant")
    result = Trainer(model, items, items.y.numpy(), validate, config, tmp_path, torch.device("cpu"), {}).fit()
    assert result.best_step == 4 and result.stopped_early and result.steps_run == 10
    assert len(snapshots) == 5
    final = model.state_dict()
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)  # the best ...
    assert not all(torch.equal(final[k], snapshots[-1][k]) for k in final)  # ... not the last
    on_disk = torch.load(tmp_path / "best-0000004.pt", weights_only=True)
    assert all(torch.equal(on_disk["model"][k], snapshots[1][k]) for k in final)
    assert sorted(p.name for p in tmp_path.glob("best-*.pt")) == ["best-0000004.pt"]


def test_stream_sampler_is_world_size_invariant_resumable_and_balances_classes():
    labels = np.array([0] * 30 + [1] * 6 + [2] * 4)
    full = list(StreamBatchSampler(labels, 8, seed=3, start_step=0, end_step=12))
    assert all(len(b) == 8 for b in full)
    halves = [list(StreamBatchSampler(labels, 8, 3, start_step=0, end_step=12, rank=r, world_size=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == full  # the union of the ranks' shares is the global batch
    assert list(StreamBatchSampler(labels, 8, 3, start_step=5, end_step=12)) == full[5:]
    epoch = [row for batch in full[:5] for row, _ in batch][:40]
    assert sorted(epoch) == list(range(40))  # unbalanced: each epoch is a permutation
    balanced = StreamBatchSampler(labels, 40, 3, balanced=True, start_step=0, end_step=60)
    counts = np.bincount(labels[[row for batch in balanced for row, _ in batch]], minlength=3)
    assert np.allclose(counts / counts.sum(), 1 / 3, atol=0.03)
    with pytest.raises(ValueError, match="not divisible"):
        StreamBatchSampler(labels, 6, 0, world_size=4)


def test_budget_and_grid_options():
    assert resolve_budget(dict(TINY, steps=None, epochs=3, eval_every="epoch"), n_train=20) == (9, 3, None)
    with pytest.raises(ValueError, match="exactly one of steps and epochs"):
        resolve_budget(dict(TINY, epochs=2), 20)
    assert search_grid(dict(TINY, lrs=[0.1, 1e-4], wds=[0.0, 1e-3], wd_over_lr=True)) == [
        (0.1, 0.0), (0.1, pytest.approx(1e-2)), (1e-4, 0.0), (1e-4, pytest.approx(10.0))]


def test_separable_images_are_learned_and_shuffled_labels_stay_at_chance(tiny_encoder, tmp_path):
    output = run_finetune(image_context(colour_dataset(), tiny_encoder, tmp_path / "a"), dict(TINY))
    assert output.metrics["accuracy"]["value"] >= 0.95
    assert output.metrics["auroc"]["value"] >= 0.95
    assert (tmp_path / "a" / "best.pt").is_file() and not list((tmp_path / "a").glob("run-00/*.pt"))

    output = run_finetune(image_context(colour_dataset(n_per_class=100, shuffle_labels=True), tiny_encoder,
                                        tmp_path / "b"), dict(TINY))
    assert abs(output.metrics["balanced_accuracy"]["value"] - 0.5) < 0.15
    assert abs(output.metrics["auroc"]["value"] - 0.5) < 0.15


def test_a_diverging_grid_setting_is_skipped_and_an_all_diverging_grid_fails(tiny_encoder, tmp_path):
    context = image_context(colour_dataset(n_per_class=20), tiny_encoder, tmp_path / "grid")
    output = run_finetune(context, dict(TINY, lrs=[1e38, 0.05], wds=[0.0]))
    assert output.extra["runs"][0]["diverged"] and output.extra["runs"][0]["best_score"] is None
    assert output.extra["selected"]["run"] == 1
    with pytest.raises(ValueError, match="diverged"):
        run_finetune(image_context(colour_dataset(n_per_class=20), tiny_encoder, tmp_path / "bad"),
                     dict(TINY, lrs=[1e38], wds=[0.0]))


def test_test_time_augmentation_averages_seeded_copies(tiny_encoder, tmp_path):
    context = image_context(colour_dataset(n_per_class=20), tiny_encoder, tmp_path / "tta")
    options = dict(TINY, steps=4, eval_every=4, tta_copies=3, rotation=30, hue=0.1)
    first = run_finetune(context, options)
    predictions = np.load(tmp_path / "tta" / "test_predictions.npz")
    np.testing.assert_allclose(predictions["probabilities"].sum(1), 1.0)
    assert first.resolved["tta_copies"] == 3
    again = run_finetune(image_context(colour_dataset(n_per_class=20), tiny_encoder, tmp_path / "tta2"), options)
    assert again.metrics == first.metrics  # seeded copies: reproducible


def _stop_at(step: int):
    class Killed(Exception):
        pass

    def hook(current: int, trainer) -> None:
        if current == step:
            raise Killed(f"simulated kill at step {current}")
    return hook, Killed


def test_a_killed_run_resumes_and_matches_an_uninterrupted_run(run_cell, results_dir, tmp_path, monkeypatch):
    options = dict(steps=10, batch_size=8, eval_every=4, checkpoint_every=3, train_size=32, patience=None,
                   eval_batch_size=32, n_boot=50, hue=0.05)
    reference = run_cell("finetune", "quick", results=tmp_path / "reference", **options)

    hook, killed = _stop_at(7)
    monkeypatch.setattr(training, "STEP_HOOKS", [hook])
    with pytest.raises(killed):
        run_cell("finetune", "quick", **options)
    artifacts = next((results_dir / "artifacts" / "finetune").rglob("run-00"))
    assert torch.load(artifacts / "last.pt", weights_only=True)["step"] == 6  # last periodic checkpoint
    monkeypatch.setattr(training, "STEP_HOOKS", [])
    resumed = run_cell("finetune", "quick", **options)

    run = json.loads((artifacts / "result.json").read_text())
    assert run["resumed_from"] == 6 and run["steps_run"] == 10
    assert resumed.metrics == reference.metrics
    assert resumed.extra["history"] == reference.extra["history"]
    ref_pred = np.load(next((tmp_path / "reference").rglob("test_predictions.npz")))["probabilities"]
    new_pred = np.load(artifacts.parent / "test_predictions.npz")["probabilities"]
    np.testing.assert_allclose(new_pred, ref_pred, atol=1e-6)
    # a rerun of the finished cell does not train again
    again = run_cell("finetune", "quick", **options)
    assert again.metrics == reference.metrics
