from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluators.knn import knn_class_probabilities, run_knn, KNN_DEFAULTS
from tests.evaluators.conftest import gaussian_features


def _reference(train_x, train_y, query_x, n_classes, k, temperature):
    """Direct per-query numpy implementation of the weighted vote."""
    train = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    out = np.zeros((len(query_x), n_classes))
    for i, q in enumerate(query_x):
        sim = train @ (q / np.linalg.norm(q))
        top = np.argsort(-sim)[:k]
        for j in top:
            out[i, train_y[j]] += np.exp(sim[j] / temperature)
        out[i] /= out[i].sum()
    return out


def test_probabilities_match_reference_for_each_k():
    rng = np.random.default_rng(0)
    train_x, train_y = rng.normal(size=(50, 8)).astype(np.float32), rng.integers(0, 3, 50)
    query_x = rng.normal(size=(7, 8)).astype(np.float32)
    out = knn_class_probabilities(torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(query_x),
                                  3, [1, 5, 20], 0.07, chunk_size=3)
    for k in (1, 5, 20):
        np.testing.assert_allclose(out[k], _reference(train_x, train_y, query_x, 3, k, 0.07), atol=1e-6)
        np.testing.assert_allclose(out[k].sum(1), 1.0)
    assert set(np.unique(out[1])) <= {0.0, 1.0}  # k=1 is the nearest neighbour's label


def test_separated_classes_give_perfect_scores_and_shuffled_labels_give_chance(feature_context):
    split = lambda seed: gaussian_features(40, 4, seed=seed)  # same class means, different noise
    ctx = feature_context(split(0), split(1), split(2), 4)
    output = run_knn(ctx, dict(KNN_DEFAULTS, n_boot=100))
    assert output.metrics["balanced_accuracy"]["value"] == 1.0
    assert output.metrics["auroc"]["value"] == 1.0
    assert output.metrics["balanced_accuracy@k10"]["value"] == 1.0
    assert output.primary_metric == "balanced_accuracy"

    x, y = gaussian_features(100, 4, seed=0)
    shuffled = np.random.default_rng(1).permutation(y)
    test_x, test_y = gaussian_features(100, 4, seed=2)
    ctx = feature_context((x, shuffled), (x[:4], y[:4]), (test_x, test_y), 4)
    output = run_knn(ctx, dict(KNN_DEFAULTS, n_boot=100))
    assert abs(output.metrics["balanced_accuracy"]["value"] - 0.25) < 0.1
    assert abs(output.metrics["auroc"]["value"] - 0.5) < 0.1


def test_neighbour_pool_and_bad_options(feature_context):
    x, y = gaussian_features(5, 2, seed=0)
    ctx = feature_context((x, y), (x, y), (x, y), 2)
    with pytest.raises(ValueError, match="exceeds the 10 images"):
        run_knn(ctx, dict(KNN_DEFAULTS))
    output = run_knn(ctx, dict(KNN_DEFAULTS, neighbours="train+val", n_boot=50))
    assert output.resolved["n_neighbour_pool"] == 20
    with pytest.raises(ValueError, match="primary_k"):
        run_knn(ctx, dict(KNN_DEFAULTS, ks=[5], primary_k=20))


def test_knn_cell_record_through_the_runner(run_cell):
    record = run_cell("knn", n_boot=50)
    assert record.primary_metric == "balanced_accuracy"
    assert {"balanced_accuracy", "auroc", "balanced_accuracy@k10"} <= set(record.metrics)
    lo, hi = record.metrics["balanced_accuracy"]["ci"]
    assert lo <= record.metrics["balanced_accuracy"]["value"] <= hi
    assert record.protocol["resolved"]["neighbour_pool"] == "train"
