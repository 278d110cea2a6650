from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evaluators.fewshot import (FEWSHOT_DEFAULTS, episode_accuracies, episode_seed, run_fewshot, sample_episodes)
from tests.evaluators.conftest import gaussian_features


def test_episodes_are_valid_seeded_and_skip_excluded_classes():
    labels = np.repeat(np.arange(6), [30, 30, 30, 30, 30, 5])
    positions = sample_episodes(labels, [0, 1, 2, 3, 4], 3, 12, episodes=250, seed=7)
    assert positions.shape == (250, 3, 12)
    episode_labels = labels[positions.numpy()]  # [E, N, K+Q]
    assert (episode_labels == episode_labels[:, :, :1]).all()  # one class per row
    assert all(len(set(row)) == 3 for row in episode_labels[:, :, 0])  # N distinct classes
    assert all(len(set(p)) == 12 for p in positions.reshape(-1, 12).tolist())  # distinct images
    assert not (episode_labels == 5).any()  # the small class is never drawn
    # every class and many images are used, uniformly enough
    assert set(np.unique(episode_labels)) == {0, 1, 2, 3, 4}
    assert len(np.unique(positions)) == 150
    assert torch.equal(positions, sample_episodes(labels, [0, 1, 2, 3, 4], 3, 12, 250, seed=7))
    assert not torch.equal(positions, sample_episodes(labels, [0, 1, 2, 3, 4], 3, 12, 250, seed=8))
    assert episode_seed(0, 5) != episode_seed(0, 20)


def test_batched_accuracy_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(90, 6)).astype(np.float32) + 3)
    labels = np.repeat(np.arange(3), 30)
    positions = sample_episodes(labels, [0, 1, 2], 3, 8, episodes=40, seed=1)
    shots = 3
    fast = episode_accuracies(x, positions, shots, max_chunk_mb=0.001)  # many small chunks
    for e in range(40):
        feats = x[positions[e]].double()  # [N, K+Q, D]
        prototypes = feats[:, :shots].mean(1)
        correct = 0
        for c in range(3):
            for q in feats[c, shots:]:
                distances = ((q - prototypes) ** 2).sum(1)  # squared Euclidean, raw features
                correct += int(distances.argmin()) == c
        assert fast[e].item() == pytest.approx(correct / 15)


def test_separated_classes_give_perfect_accuracy_and_shuffled_labels_give_chance(feature_context):
    x, y = gaussian_features(40, 6, separation=12.0)
    ctx = feature_context((x[:2], y[:2]), (x[:2], y[:2]), (x, y), 6)
    output = run_fewshot(ctx, dict(FEWSHOT_DEFAULTS))
    assert output.metrics["accuracy"]["value"] == 1.0
    assert output.metrics["accuracy@5shot"]["value"] == 1.0
    assert output.resolved["per_shots"]["20"]["n_way"] == 5

    shuffled = np.random.default_rng(0).permutation(y)
    ctx = feature_context((x[:2], y[:2]), (x[:2], y[:2]), (x, shuffled), 6)
    output = run_fewshot(ctx, dict(FEWSHOT_DEFAULTS))
    entry = output.metrics["accuracy"]
    assert abs(entry["value"] - 0.2) < 0.03  # 5-way chance
    half = 1.96 * entry["sd"] / math.sqrt(600)
    assert entry["ci"] == pytest.approx([entry["value"] - half, entry["value"] + half])
    assert entry["n_episodes"] == 600


def test_small_classes_are_excluded_and_recorded(feature_context):
    x, y = gaussian_features(40, 4)
    keep = np.concatenate([np.flatnonzero(y != 3), np.flatnonzero(y == 3)[:22]])  # class 3: 22 < 20 + 15
    ctx = feature_context((x[:2], y[:2]), (x[:2], y[:2]), (x[keep], y[keep]), 4)
    output = run_fewshot(ctx, dict(FEWSHOT_DEFAULTS))
    assert output.resolved["per_shots"]["20"]["excluded_classes"] == {"c3": 22}
    assert output.resolved["per_shots"]["20"]["n_way"] == 3
    assert output.resolved["per_shots"]["5"]["excluded_classes"] == {}
    assert output.resolved["per_shots"]["5"]["n_way"] == 4
    with pytest.raises(ValueError, match="lower n_query"):
        run_fewshot(ctx, dict(FEWSHOT_DEFAULTS, shots=[30], primary_shots=30))


def test_fewshot_cell_record_through_the_runner(run_cell):
    record = run_cell("fewshot", shots=[1, 3], primary_shots=3, n_query=4, episodes=100)
    assert record.primary_metric == "accuracy"
    assert {"accuracy", "accuracy@1shot", "accuracy@3shot"} <= set(record.metrics)
    assert record.metrics["accuracy"] == record.metrics["accuracy@3shot"]
    assert record.protocol["resolved"]["split"] == "test"
