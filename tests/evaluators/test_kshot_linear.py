from __future__ import annotations

import json

import numpy as np
import pytest

from evaluators.kshot_linear import KSHOT_DEFAULTS, draw_support, run_kshot_linear, support_permutations
from tests.evaluators.conftest import gaussian_features

FAST = dict(KSHOT_DEFAULTS, ks=[1, 5], primary_k=5, seeds=3, wd_min_exp=-2.0, wd_max_exp=2.0, wd_steps=3, max_iter=50)


def test_supports_are_nested_per_class_and_seeded():
    labels = np.repeat(np.arange(3), [10, 7, 12])
    perms = support_permutations(labels, 3, seed=0, draw=1)
    five, two = draw_support(perms, 5), draw_support(perms, 2)
    assert np.bincount(labels[five]).tolist() == [5, 5, 5]
    assert set(two) <= set(five)
    assert np.array_equal(five, draw_support(support_permutations(labels, 3, 0, 1), 5))
    assert not np.array_equal(five, draw_support(support_permutations(labels, 3, 0, 2), 5))


def test_separated_classes_give_perfect_scores_and_shuffled_labels_give_chance(feature_context):
    split = lambda seed, n=30: gaussian_features(n, 3, seed=seed)
    ctx = feature_context(split(0), split(1), split(2), 3)
    output = run_kshot_linear(ctx, dict(FAST))
    assert output.metrics["balanced_accuracy"]["value"] == 1.0
    assert output.metrics["balanced_accuracy@k1"]["sd"] == 0.0
    assert len(output.metrics["auroc@k5"]["values"]) == 3

    # labels independent of the features in every split: whatever the probe learns, test is at chance
    shuffled = [(x, np.random.default_rng(seed).permutation(y)) for seed, (x, y) in
                enumerate([split(0, 100), split(1), split(2, 200)])]
    ctx = feature_context(*shuffled, 3)
    output = run_kshot_linear(ctx, dict(FAST))
    assert abs(output.metrics["balanced_accuracy"]["value"] - 1 / 3) < 0.12
    assert abs(output.metrics["auroc"]["value"] - 0.5) < 0.12


def test_support_from_train_only_and_large_k_skipped(feature_context, tmp_path):
    x, y = gaussian_features(8, 3)
    ctx = feature_context((x, y), gaussian_features(4, 3, seed=1), gaussian_features(4, 3, seed=2), 3)
    output = run_kshot_linear(ctx, dict(FAST, ks=[1, 5, 10], primary_k=10))
    assert output.resolved["ks"] == [1, 5]
    assert "10" in output.resolved["skipped_ks"]
    assert output.resolved["primary_k"] == 5
    supports = json.loads((tmp_path / "artifacts" / "supports.json").read_text())
    train_indices = set(ctx.features("train").indices.tolist())
    used = {i for per_seed in supports.values() for rows in per_seed.values() for i in rows}
    assert used <= train_indices
    assert len(supports["5"]["0"]) == 15
    with pytest.raises(ValueError, match="primary_k"):
        run_kshot_linear(ctx, dict(FAST, ks=[1], primary_k=5))
