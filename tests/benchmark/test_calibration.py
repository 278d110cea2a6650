"""ECE and temperature scaling: a hand-computed ECE, the bin edges, and temperature recovery."""
from __future__ import annotations

import numpy as np
import pytest

from benchmark.calibration import (apply_temperature, calibration_metrics, ece_with_ci, expected_calibration_error,
                                   fit_temperature)


def test_ece_by_hand():
    # confidences 0.9 (right), 0.81 (wrong), 0.7 (right), 0.55 (wrong) fall in four different 1/15 bins:
    # ECE = (|1 - .9| + |0 - .81| + |1 - .7| + |0 - .55|) / 4 = 0.44
    proba = np.array([[0.9, 0.1], [0.19, 0.81], [0.3, 0.7], [0.55, 0.45]])
    y = np.array([0, 0, 1, 1])
    assert expected_calibration_error(y, proba) == pytest.approx(0.44)
    # two in one bin (0.9 right, 0.92 wrong, both in (13/15, 14/15]): |1 - 1.82| / 2 = 0.41
    assert expected_calibration_error(np.array([0, 0]), np.array([[0.9, 0.1], [0.08, 0.92]])) == pytest.approx(0.41)
    # one bin of width 1 is |accuracy - mean confidence|
    assert expected_calibration_error(y, proba, n_bins=1) == pytest.approx(abs(0.5 - np.mean([0.9, 0.81, 0.7, 0.55])))


def test_perfectly_calibrated_and_ci():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 20000)
    y = (rng.random(20000) >= confidence).astype(int)  # class 0 is right with probability = confidence
    proba = np.c_[confidence, 1 - confidence]
    value, (lo, hi) = ece_with_ci(y, proba, n_boot=200)
    assert value < 0.02 and lo <= value <= hi


def test_temperature_scaling_recovers_the_temperature_and_lowers_ece():
    rng = np.random.default_rng(1)
    n, c = 4000, 4
    logits = rng.normal(scale=2.0, size=(n, c))
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(c, p=p) for p in true])
    overconfident = apply_temperature(true, 0.5)  # logits x 2
    assert fit_temperature(y[:2000], overconfident[:2000]) == pytest.approx(2.0, rel=0.1)
    entries = calibration_metrics(y[:2000], overconfident[:2000], y[2000:], overconfident[2000:], n_boot=100)
    assert entries["ece_temperature_scaled"]["value"] < entries["ece"]["value"] / 2
    assert entries["ece"]["bins"] == 15 and entries["ece_temperature_scaled"]["temperature_fitted_on"] == "val"


def test_a_temperature_at_the_search_bound_is_flagged():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 300)
    proba = np.eye(3)[rng.integers(0, 3, 300)] * 0.98 + 0.01 / 1  # confident and unrelated to the labels
    proba /= proba.sum(1, keepdims=True)
    entries = calibration_metrics(y[:150], proba[:150], y[150:], proba[150:], n_boot=50)
    assert entries["ece_temperature_scaled"]["temperature"] == pytest.approx(100.0, rel=1e-3)
    assert entries["ece_temperature_scaled"]["temperature_at_bound"] is True
