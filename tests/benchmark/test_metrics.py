import logging
import time

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from benchmark.metrics import (
    METRIC_NAMES,
    _metrics_for_resamples,
    _resample_indices,
    bootstrap_ci,
    classification_metrics,
    evaluate_with_ci,
    mean_sd,
    subgroup_metrics,
)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _data(n: int = 500, c: int = 5, signal: float = 1.0, seed: int = 0, round_to: int | None = None):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    z = rng.normal(size=(n, c))
    z[np.arange(n), y] += signal
    p = _softmax(z)
    if round_to is not None:  # create ties in the scores
        p = np.round(p, round_to) + 1e-12
        p /= p.sum(axis=1, keepdims=True)
    return y, p


def _sklearn_metrics(y, p):
    pred = p.argmax(1)
    if p.shape[1] == 2:
        auroc = roc_auc_score(y, p[:, 1])
    else:
        present = np.unique(y)
        if present.size == p.shape[1]:
            auroc = roc_auc_score(y, p, multi_class="ovr", average="macro")
        else:
            auroc = np.mean([roc_auc_score(y == k, p[:, k]) for k in present])
    return {
        "accuracy": accuracy_score(y, pred),
        "balanced_accuracy": balanced_accuracy_score(y, pred),
        "auroc": auroc,
        "f1_macro": f1_score(y, pred, average="macro", zero_division=0),
    }


def test_perfect_predictions():
    y = np.array([0, 1, 2, 2, 1, 0, 2])
    p = np.eye(3)[y] * 0.9 + 0.1 / 3
    assert classification_metrics(y, p) == {nm: 1.0 for nm in METRIC_NAMES}
    yb = np.array([0, 1, 1, 0])
    assert classification_metrics(yb, np.eye(2)[yb]) == {nm: 1.0 for nm in METRIC_NAMES}


def test_hand_computed_multiclass():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array(
        [
            [0.7, 0.2, 0.1],  # pred 0 (correct)
            [0.3, 0.6, 0.1],  # pred 1
            [0.1, 0.8, 0.1],  # pred 1 (correct)
            [0.2, 0.5, 0.3],  # pred 1 (correct)
            [0.1, 0.2, 0.7],  # pred 2 (correct)
            [0.5, 0.1, 0.4],  # pred 0
        ]
    )
    m = classification_metrics(y, p)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 2 + 1 / 2) / 3)
    # F1: class 0 tp1 fp1 fn1 -> 1/2; class 1 tp2 fp1 fn0 -> 4/5; class 2 tp1 fp0 fn1 -> 2/3
    assert m["f1_macro"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # OvR AUROC. class 0 scores pos {.7,.3} vs neg {.1,.2,.1,.5}: .7 beats 4, .3 beats 3 -> 7/8
    # class 1 pos {.8,.5} vs neg {.2,.6,.2,.1}: .8 beats 4, .5 beats 3 -> 7/8
    # class 2 pos {.7,.4} vs neg {.1,.1,.1,.3}: 8/8
    assert m["auroc"] == pytest.approx((7 / 8 + 7 / 8 + 1.0) / 3)


def test_hand_computed_binary_auroc_with_ties():
    y = np.array([0, 1, 0, 1])
    s = np.array([0.2, 0.2, 0.5, 0.9])
    p = np.stack([1 - s, s], axis=1)
    # pairs (pos, neg): (.2,.2) tie -> .5, (.2,.5) -> 0, (.9,.2) -> 1, (.9,.5) -> 1
    assert classification_metrics(y, p)["auroc"] == pytest.approx(2.5 / 4)


@pytest.mark.parametrize("c,round_to", [(2, None), (2, 1), (7, None), (7, 2)])
def test_matches_sklearn_full_sample(c, round_to):
    y, p = _data(n=400, c=c, round_to=round_to, seed=c)
    ours = classification_metrics(y, p)
    ref = _sklearn_metrics(y, p)
    for nm in METRIC_NAMES:
        assert ours[nm] == pytest.approx(ref[nm], abs=1e-12), nm


def test_vectorised_resamples_match_sklearn():
    # Unstratified resamples (classes may go missing) with ties; each replicate vs sklearn.
    y, p = _data(n=60, c=4, round_to=1, seed=3)
    idx = _resample_indices(y, 20, np.random.default_rng(0), stratify=False)
    reps = _metrics_for_resamples(y, p, idx, METRIC_NAMES)
    for b in range(idx.shape[0]):
        ref = _sklearn_metrics(y[idx[b]], p[idx[b]])
        for nm in METRIC_NAMES:
            assert reps[nm][b] == pytest.approx(ref[nm], abs=1e-12), (nm, b)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_absent_class_and_predicted_but_absent():
    # class 3 never occurs in y_true but is sometimes predicted
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    p = _softmax(rng.normal(size=(200, 4)) + 1.5 * np.eye(4)[y])
    assert (p.argmax(1) == 3).any()
    ours = classification_metrics(y, p)
    ref = _sklearn_metrics(y, p)
    for nm in METRIC_NAMES:
        assert ours[nm] == pytest.approx(ref[nm], abs=1e-12), nm


def test_auroc_nan_with_single_class(caplog):
    y = np.zeros(10, dtype=int)
    p = _softmax(np.random.default_rng(0).normal(size=(10, 3)))
    with caplog.at_level(logging.WARNING, logger="benchmark.metrics"):
        m = classification_metrics(y, p)
    assert np.isnan(m["auroc"])
    assert "fewer than 2 classes" in caplog.text
    assert m["accuracy"] == pytest.approx((p.argmax(1) == 0).mean())


def test_input_validation():
    y, p = _data(n=20, c=3)
    with pytest.raises(ValueError):
        classification_metrics(y, p * 2)  # not probabilities
    with pytest.raises(ValueError):
        classification_metrics(y + 3, p)
    with pytest.raises(ValueError):
        classification_metrics(y, p, n_classes=4)


def test_stratified_resampling_keeps_class_counts():
    y, _ = _data(n=100, c=5)
    idx = _resample_indices(y, 50, np.random.default_rng(0), stratify=True)
    for b in range(50):
        np.testing.assert_array_equal(np.bincount(y[idx[b]], minlength=5), np.bincount(y, minlength=5))


def test_ci_contains_point_and_narrows_with_more_data():
    widths = []
    for n in (200, 3000):
        y, p = _data(n=n, c=5, seed=11)
        res = evaluate_with_ci(y, p, n_boot=300, seed=0)
        for nm in METRIC_NAMES:
            lo, hi = res[nm]["ci"]
            assert lo <= res[nm]["value"] <= hi, (nm, n)
        widths.append({nm: res[nm]["ci"][1] - res[nm]["ci"][0] for nm in METRIC_NAMES})
    for nm in METRIC_NAMES:
        assert widths[1][nm] < 0.6 * widths[0][nm], nm


def test_bootstrap_seeded_determinism():
    y, p = _data(n=300, c=4)
    a = bootstrap_ci(y, p, n_boot=200, seed=5)
    b = bootstrap_ci(y, p, n_boot=200, seed=5)
    c = bootstrap_ci(y, p, n_boot=200, seed=6)
    assert a == b
    assert a != c
    u = bootstrap_ci(y, p, n_boot=200, seed=5, stratify=False)
    assert u == bootstrap_ci(y, p, n_boot=200, seed=5, stratify=False)


def test_bootstrap_speed():
    y, p = _data(n=2000, c=7)
    t0 = time.process_time()  # CPU time: robust to other load on shared machines
    ci = bootstrap_ci(y, p, n_boot=1000, seed=0)
    assert time.process_time() - t0 < 3.0
    assert all(lo < hi for lo, hi in ci.values())


def test_subgroup_metrics():
    y, p = _data(n=120, c=3, seed=2)
    sex = np.array(["F"] * 50 + ["M"] * 60 + ["unknown"] * 5 + [None] * 5, dtype=object)
    fitz = np.array([1.0] * 40 + [2.0] * 40 + [3.0] * 5 + [np.nan] * 35)
    res = subgroup_metrics(y, p, {"sex": sex, "fitzpatrick": fitz}, min_size=10, n_boot=50)
    assert list(res["sex"]) == ["F", "M"]
    assert list(res["fitzpatrick"]) == ["1", "2"]  # "3" has 5 < 10 samples; NaN skipped
    assert res["sex"]["F"]["n"] == 50 and res["sex"]["M"]["n"] == 60
    mask = sex == "M"
    ref = classification_metrics(y[mask], p[mask])
    for nm in METRIC_NAMES:
        assert res["sex"]["M"][nm]["value"] == pytest.approx(ref[nm])
        assert len(res["sex"]["M"][nm]["ci"]) == 2


def test_mean_sd():
    r = mean_sd([1.0, 2.0, 3.0])
    assert r == {"mean": 2.0, "sd": 1.0, "n": 3, "values": [1.0, 2.0, 3.0]}
    assert mean_sd([0.5]) == {"mean": 0.5, "sd": 0.0, "n": 1, "values": [0.5]}
    with pytest.raises(ValueError):
        mean_sd([])
