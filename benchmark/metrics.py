"""Classification metrics with vectorised, seeded percentile-bootstrap confidence intervals.

All metrics (point estimates and bootstrap replicates) go through one vectorised code path:

* accuracy, balanced accuracy and macro F1 from per-resample confusion matrices, obtained with
  a single ``np.bincount`` over (resample, true, pred) indices;
* AUROC from the Mann-Whitney statistic with mid-ranks for ties (identical to the trapezoidal
  ROC AUC of ``sklearn.metrics.roc_auc_score``). A bootstrap resample is a multiset of the
  original samples, so with the samples sorted once by score, a resample's AUROC only needs the
  per-sample multiplicities: for each tie group of scores, count the (weighted) positives and
  negatives, and sum ``pos_g * (neg_below_g + neg_g / 2)``.

Definitions (matching scikit-learn on the full sample):

* ``accuracy``: fraction of ``argmax(proba) == y_true``.
* ``balanced_accuracy``: mean recall over classes present in ``y_true``
  (``sklearn.metrics.balanced_accuracy_score``).
* ``auroc``: binary (C == 2) ROC AUC of ``proba[:, 1]``; multi-class: unweighted mean of the
  one-vs-rest AUROCs of ``proba[:, c]`` over classes ``c`` present in ``y_true``
  (``roc_auc_score(multi_class="ovr", average="macro")`` when all classes are present). Always
  computed from probabilities. NaN (with a logged warning) if fewer than 2 classes are present.
* ``f1_macro``: unweighted mean F1 over classes present in ``y_true`` or in the predictions
  (``f1_score(average="macro")``; a class never predicted or predicted but absent scores 0).

Bootstrap: by default resampling is *stratified by class*: each resample draws ``n_c`` samples
with replacement from the ``n_c`` samples of every class ``c``, so each resample keeps the
observed class counts and every class (class-dependent metrics such as balanced accuracy, macro
F1 and one-vs-rest AUROC are always defined). The interval therefore reflects sampling
variability conditional on the test set's class composition. ``stratify=False`` gives the plain
(unconditional) bootstrap; resamples where a metric is undefined are then dropped with a warning.
Intervals are percentile intervals ``[q(alpha/2), q(1 - alpha/2)]`` (linear interpolation).

Multi-label (``y_true`` 0/1 [N, L], ``scores`` per-finding probabilities [N, L], e.g. sigmoids), as
MedMNIST's ``getAUC``/``getACC`` for ``multi-label, binary-class``:

* ``auroc``: mean over findings of the ROC AUC of ``scores[:, l]`` (findings with a single class in
  ``y_true`` are left out, with a logged warning; MedMNIST's evaluator would raise there);
* ``accuracy``: mean over findings of the accuracy of ``scores[:, l] > 0.5`` (strict, as MedMNIST),
  which equals the fraction of correct (image, finding) entries.

Their bootstrap resamples whole images (plain, not stratified: there is no single class to
stratify on), with the same per-resample definitions.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "METRIC_NAMES",
    "MULTILABEL_METRIC_NAMES",
    "classification_metrics",
    "bootstrap_ci",
    "evaluate_with_ci",
    "multilabel_metrics",
    "multilabel_per_label",
    "evaluate_multilabel_with_ci",
    "evaluate_scores",
    "point_metrics",
    "subgroup_metrics",
    "subgroup_key",
    "mean_sd",
]

METRIC_NAMES: tuple[str, ...] = ("accuracy", "balanced_accuracy", "auroc", "f1_macro")
MULTILABEL_METRIC_NAMES: tuple[str, ...] = ("accuracy", "auroc")
MULTILABEL_THRESHOLD = 0.5

# Upper bound on the number of (resample x sample) entries materialised at once.
_CHUNK_ELEMENTS = 2_000_000


def _check_inputs(
    y_true: np.ndarray, proba: np.ndarray, n_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate and convert: y_true -> int64 [N], proba -> float64 [N, C]."""
    proba = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y_true)
    if proba.ndim != 2:
        raise ValueError(f"proba must be [N, C], got shape {proba.shape}")
    n, c = proba.shape
    if n_classes is not None and n_classes != c:
        raise ValueError(f"n_classes={n_classes} but proba has {c} columns")
    if c < 2:
        raise ValueError("need at least 2 classes (proba columns)")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"y_true must be [N={n}], got shape {y.shape}")
    if n == 0:
        raise ValueError("empty evaluation set")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"y_true must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    if y.min() < 0 or y.max() >= c:
        raise ValueError(f"y_true values must lie in [0, {c}), got [{y.min()}, {y.max()}]")
    if not np.all(np.isfinite(proba)):
        raise ValueError("proba contains non-finite values")
    if not np.allclose(proba.sum(axis=1), 1.0, rtol=0.0, atol=1e-4):
        raise ValueError("rows of proba must sum to 1 (pass class probabilities, e.g. softmax outputs)")
    return y, proba, c


def _confusion_metrics(
    y: np.ndarray, pred: np.ndarray, idx: np.ndarray, n_classes: int
) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy, macro F1 for each resample.

    y, pred: [N] int; idx: [B, M] sample indices of B resamples. Returns arrays of shape [B].
    """
    b, m = idx.shape
    c = n_classes
    flat = (np.arange(b)[:, None] * c + y[idx]) * c + pred[idx]  # [B, M]
    cm = np.bincount(flat.ravel(), minlength=b * c * c).reshape(b, c, c).astype(np.float64)
    tp = np.diagonal(cm, axis1=1, axis2=2)  # [B, C]
    support = cm.sum(axis=2)  # true counts [B, C]
    predicted = cm.sum(axis=1)  # predicted counts [B, C]
    accuracy = tp.sum(axis=1) / m

    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    balanced = recall.sum(axis=1) / present.sum(axis=1)

    denom = support + predicted  # = 2 tp + fp + fn
    labelled = denom > 0
    f1 = np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=labelled)
    f1_macro = f1.sum(axis=1) / labelled.sum(axis=1)
    return {"accuracy": accuracy, "balanced_accuracy": balanced, "f1_macro": f1_macro}


def _weighted_auc(score: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC with mid-ranks for ties, for several multiplicity vectors at once.

    score: [N] float, positive: [N] bool, weights: [B, N] non-negative sample multiplicities.
    Returns [B]; NaN where a resample has no positive or no negative sample.
    """
    order = np.argsort(score, kind="stable")
    s = score[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first index of each tie group
    w = weights[:, order]
    pos = positive[order]
    wp = np.add.reduceat(np.where(pos, w, 0), starts, axis=1).astype(np.float64)  # [B, G]
    wn = np.add.reduceat(np.where(pos, 0, w), starts, axis=1).astype(np.float64)  # [B, G]
    neg_below = np.cumsum(wn, axis=1) - wn
    num = (wp * (neg_below + 0.5 * wn)).sum(axis=1)
    den = wp.sum(axis=1) * wn.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _auroc(y: np.ndarray, proba: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Binary / macro one-vs-rest AUROC per resample. weights: [B, N] multiplicities -> [B]."""
    c = proba.shape[1]
    if c == 2:
        return _weighted_auc(proba[:, 1], y == 1, weights)
    per_class = []
    for k in np.unique(y):  # classes present in y_true; absent-in-resample ones give NaN
        per_class.append(_weighted_auc(proba[:, k], y == k, weights))
    a = np.stack(per_class, axis=1)  # [B, K]
    valid = ~np.isnan(a)
    count = valid.sum(axis=1)
    with np.errstate(invalid="ignore"):
        mean = np.where(valid, a, 0.0).sum(axis=1) / count
    # Undefined unless at least 2 classes are present in the resample.
    return np.where(count >= 2, mean, np.nan)


def _metrics_for_resamples(
    y: np.ndarray, proba: np.ndarray, idx: np.ndarray, names: Sequence[str]
) -> dict[str, np.ndarray]:
    """All requested metrics for resamples idx [B, N] -> {name: [B]}."""
    n, c = proba.shape
    pred = np.argmax(proba, axis=1)
    out: dict[str, np.ndarray] = {}
    if any(nm != "auroc" for nm in names):
        conf = _confusion_metrics(y, pred, idx, c)
        out.update({nm: conf[nm] for nm in names if nm != "auroc"})
    if "auroc" in names:
        b = idx.shape[0]
        weights = np.bincount(
            (np.arange(b)[:, None] * n + idx).ravel(), minlength=b * n
        ).reshape(b, n)
        out["auroc"] = _auroc(y, proba, weights)
    return out


def _validate_names(metric_names: Iterable[str]) -> tuple[str, ...]:
    names = tuple(metric_names)
    unknown = set(names) - set(METRIC_NAMES)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; available: {METRIC_NAMES}")
    return names


def classification_metrics(
    y_true: np.ndarray, proba: np.ndarray, n_classes: int | None = None
) -> dict[str, float]:
    """Point estimates of accuracy, balanced_accuracy, auroc, f1_macro.

    y_true: [N] int class indices; proba: [N, C] class probabilities (rows sum to 1);
    predictions are ``argmax(proba, axis=1)``. See module docstring for definitions.
    """
    y, proba, _ = _check_inputs(y_true, proba, n_classes)
    if np.unique(y).size < 2:
        logger.warning("classification_metrics: fewer than 2 classes present in y_true; auroc is NaN")
    idx = np.arange(y.shape[0])[None, :]
    res = _metrics_for_resamples(y, proba, idx, METRIC_NAMES)
    return {nm: float(res[nm][0]) for nm in METRIC_NAMES}


def _resample_indices(
    y: np.ndarray, n_resamples: int, rng: np.random.Generator, stratify: bool
) -> np.ndarray:
    """[n_resamples, N] bootstrap indices (stratified by class: positions of class c are
    refilled with draws from class c)."""
    n = y.shape[0]
    if not stratify:
        return rng.integers(0, n, size=(n_resamples, n))
    idx = np.empty((n_resamples, n), dtype=np.int64)
    for k in np.unique(y):
        members = np.flatnonzero(y == k)
        idx[:, members] = members[rng.integers(0, members.size, size=(n_resamples, members.size))]
    return idx


def bootstrap_ci(
    y_true: np.ndarray,
    proba: np.ndarray,
    metric_names: Sequence[str] = METRIC_NAMES,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    stratify: bool = True,
) -> dict[str, tuple[float, float]]:
    """Seeded percentile-bootstrap ``(1 - alpha)`` intervals over test samples.

    y_true: [N] int; proba: [N, C]. Resampling is stratified by class unless ``stratify=False``
    (see module docstring). Returns ``{metric: (lo, hi)}``; ``(nan, nan)`` if the metric is
    undefined in every resample. Deterministic for a given (data, n_boot, seed, stratify).
    """
    y, proba, _ = _check_inputs(y_true, proba)
    names = _validate_names(metric_names)
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be in (0, 1)")
    n = y.shape[0]
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    reps: dict[str, list[np.ndarray]] = {nm: [] for nm in names}
    for start in range(0, n_boot, chunk):
        idx = _resample_indices(y, min(chunk, n_boot - start), rng, stratify)
        for nm, v in _metrics_for_resamples(y, proba, idx, names).items():
            reps[nm].append(v)
    out: dict[str, tuple[float, float]] = {}
    for nm in names:
        v = np.concatenate(reps[nm])
        finite = v[~np.isnan(v)]
        if finite.size < v.size:
            logger.warning(
                "bootstrap_ci: %s undefined in %d/%d resamples; they are excluded",
                nm, v.size - finite.size, v.size,
            )
        if finite.size == 0:
            out[nm] = (math.nan, math.nan)
            continue
        lo, hi = np.percentile(finite, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
        out[nm] = (float(lo), float(hi))
    return out


def evaluate_with_ci(
    y_true: np.ndarray, proba: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, dict]:
    """``{metric: {"value": point estimate, "ci": [lo, hi]}}`` for all metrics.

    y_true: [N] int; proba: [N, C]. The value is computed on the full sample; the CI is the
    stratified percentile bootstrap of :func:`bootstrap_ci`.
    """
    values = classification_metrics(y_true, proba)
    cis = bootstrap_ci(y_true, proba, METRIC_NAMES, n_boot=n_boot, seed=seed, alpha=alpha)
    return {nm: {"value": values[nm], "ci": [cis[nm][0], cis[nm][1]]} for nm in METRIC_NAMES}


# -- multi-label ------------------------------------------------------------------------------------
def _check_multilabel(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert: y_true -> bool [N, L], scores -> float64 [N, L] in [0, 1]."""
    y, s = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    if y.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"multi-label metrics need y_true and scores of one shape [N, L], got {y.shape} and {s.shape}")
    if y.shape[0] == 0:
        raise ValueError("empty evaluation set")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("multi-label y_true must hold only 0 and 1")
    if not np.all(np.isfinite(s)) or s.min() < 0 or s.max() > 1:
        raise ValueError("multi-label scores must be finite probabilities in [0, 1] (e.g. sigmoid outputs)")
    return y.astype(bool), s


def _multilabel_for_resamples(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Mean per-finding AUROC and mean label accuracy for multiplicities ``weights`` [B, N] -> {name: [B]}."""
    aucs = np.stack([_weighted_auc(scores[:, k], y[:, k], weights) for k in range(y.shape[1])], axis=1)  # [B, L]
    valid = ~np.isnan(aucs)
    count = valid.sum(axis=1)
    with np.errstate(invalid="ignore"):
        auroc = np.where(count > 0, np.where(valid, aucs, 0.0).sum(axis=1) / np.maximum(count, 1), np.nan)
    correct = ((scores > MULTILABEL_THRESHOLD) == y).mean(axis=1)  # [N]: each image's share of correct findings
    accuracy = weights @ correct / weights.sum(axis=1)
    return {"accuracy": accuracy, "auroc": auroc}


def multilabel_per_label(y_true: np.ndarray, scores: np.ndarray) -> dict[str, list[float]]:
    """Per-finding ``auroc`` (NaN where a finding has one class) and ``accuracy`` at 0.5: {name: [L]}."""
    y, s = _check_multilabel(y_true, scores)
    ones = np.ones((1, y.shape[0]), dtype=np.int64)
    aucs = [float(_weighted_auc(s[:, k], y[:, k], ones)[0]) for k in range(y.shape[1])]
    accuracy = ((s > MULTILABEL_THRESHOLD) == y).mean(axis=0)
    return {"auroc": aucs, "accuracy": [float(a) for a in accuracy]}


def multilabel_metrics(y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """MedMNIST's multi-label AUC (mean over findings) and ACC (mean label accuracy at 0.5).

    y_true: 0/1 [N, L]; scores: per-finding probabilities [N, L].
    """
    y, s = _check_multilabel(y_true, scores)
    single = [k for k in range(y.shape[1]) if y[:, k].all() or not y[:, k].any()]
    if single:
        logger.warning("multilabel_metrics: findings %s have one class in y_true; they are left out of the AUC", single)
    out = _multilabel_for_resamples(y, s, np.ones((1, y.shape[0]), dtype=np.int64))
    return {name: float(out[name][0]) for name in MULTILABEL_METRIC_NAMES}


def evaluate_multilabel_with_ci(y_true: np.ndarray, scores: np.ndarray, n_boot: int = 1000, seed: int = 0,
                                alpha: float = 0.05) -> dict[str, dict]:
    """``{"auroc"|"accuracy": {"value", "ci"}}`` with a seeded percentile bootstrap over images.

    y_true: 0/1 [N, L]; scores: [N, L]. Resamples where every finding's AUC is undefined are dropped
    (logged); ``ci`` is ``[nan, nan]`` when none is left.
    """
    if n_boot < 1 or not 0.0 < alpha < 1.0:
        raise ValueError("need n_boot >= 1 and 0 < alpha < 1")
    values = multilabel_metrics(y_true, scores)
    y, s = _check_multilabel(y_true, scores)
    n = y.shape[0]
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    reps: dict[str, list[np.ndarray]] = {name: [] for name in MULTILABEL_METRIC_NAMES}
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        weights = np.bincount((np.arange(b)[:, None] * n + idx).ravel(), minlength=b * n).reshape(b, n)
        for name, v in _multilabel_for_resamples(y, s, weights).items():
            reps[name].append(v)
    out = {}
    for name in MULTILABEL_METRIC_NAMES:
        v = np.concatenate(reps[name])
        finite = v[~np.isnan(v)]
        if finite.size < v.size:
            logger.warning("bootstrap: multi-label %s undefined in %d/%d resamples; they are excluded",
                           name, v.size - finite.size, v.size)
        ci = (np.percentile(finite, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)]) if finite.size
              else (math.nan, math.nan))
        out[name] = {"value": values[name], "ci": [float(ci[0]), float(ci[1])]}
    return out


def point_metrics(y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """:func:`classification_metrics` (labels [N], probabilities [N, C]) or :func:`multilabel_metrics` (0/1 [N, L])."""
    if np.ndim(y_true) == 2:
        return multilabel_metrics(y_true, scores)
    return classification_metrics(y_true, scores)


def evaluate_scores(y_true: np.ndarray, scores: np.ndarray, n_boot: int = 1000, seed: int = 0,
                    alpha: float = 0.05) -> dict[str, dict]:
    """:func:`evaluate_with_ci` for labels [N] and class probabilities [N, C]; :func:`evaluate_multilabel_with_ci`
    for a 0/1 label matrix [N, L] and per-finding probabilities [N, L]."""
    if np.ndim(y_true) == 2:
        return evaluate_multilabel_with_ci(y_true, scores, n_boot=n_boot, seed=seed, alpha=alpha)
    return evaluate_with_ci(y_true, scores, n_boot=n_boot, seed=seed, alpha=alpha)


_MISSING_STRINGS = {"", "unknown", "nan", "none", "null", "na", "n/a"}


def subgroup_key(value: Any) -> str | None:
    """Canonical string key of a subgroup value, or None when missing/unknown.

    Missing: None, NaN (incl. pandas NA/NaT), and (case-insensitively, stripped) the strings
    "", "unknown", "nan", "none", "null", "na", "n/a". Integral floats map to ints (3.0 -> "3"),
    so a column turned to float by missing values keys like the integer column.
    """
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    try:
        if value != value:  # NaN
            return None
    except (TypeError, ValueError):  # e.g. pandas.NA refuses truth testing
        return None
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        return None if value.strip().lower() in _MISSING_STRINGS else value.strip()
    if isinstance(value, float):
        if math.isinf(value):
            return None
        if value.is_integer():
            return str(int(value))
    return str(value)


def _sort_key(key: str) -> tuple[int, float, str]:
    try:
        return (0, float(key), key)
    except ValueError:
        return (1, 0.0, key)


def subgroup_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    subgroups: dict[str, np.ndarray],
    min_size: int = 10,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, dict[str, dict]]:
    """Metrics with bootstrap CIs per subgroup value.

    y_true: [N]; proba: [N, C] (multi-label: y_true 0/1 [N, L], proba [N, L]); subgroups: {column: [N]
    values} (e.g. "sex", "fitzpatrick"). Returns ``{column: {str(value): {"n": n, metric: {"value", "ci"},
    ...}}}`` for values with ``>= min_size`` samples; missing/unknown values are skipped (see
    :func:`subgroup_key`). Groups with a single class get ``auroc`` NaN (logged).
    """
    if np.ndim(y_true) == 2:
        y, proba = _check_multilabel(y_true, proba)
    else:
        y, proba, _ = _check_inputs(y_true, proba)
    n = y.shape[0]
    out: dict[str, dict[str, dict]] = {}
    for column, values in subgroups.items():
        values = np.asarray(values, dtype=object)
        if values.shape != (n,):
            raise ValueError(f"subgroup {column!r} has shape {values.shape}, expected ({n},)")
        keys = np.array([subgroup_key(v) for v in values], dtype=object)
        valid = np.array([k is not None for k in keys], dtype=bool)
        col: dict[str, dict] = {}
        for key in sorted({k for k in keys[valid]}, key=_sort_key):
            mask = valid & (keys == key)
            size = int(mask.sum())
            if size < min_size:
                logger.info("subgroup_metrics: skipping %s=%s (n=%d < min_size=%d)", column, key, size, min_size)
                continue
            col[key] = {"n": size, **evaluate_scores(y[mask], proba[mask], n_boot=n_boot, seed=seed)}
        n_missing = int((~valid).sum())
        if n_missing:
            logger.info("subgroup_metrics: %d samples with missing/unknown %s skipped", n_missing, column)
        out[column] = col
    return out


def mean_sd(values: Sequence[float]) -> dict:
    """``{"mean", "sd" (ddof=1; 0.0 for a single value), "n", "values"}`` of e.g. per-seed scores."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError("mean_sd needs a non-empty 1-D sequence of numbers")
    sd = float(np.std(v, ddof=1)) if v.size > 1 else 0.0
    return {"mean": float(np.mean(v)), "sd": sd, "n": int(v.size), "values": [float(x) for x in v]}


# Public names for the paired statistics (benchmark.stats): the very code paths of the record CIs.
check_inputs = _check_inputs
metrics_for_resamples = _metrics_for_resamples
resample_indices = _resample_indices
CHUNK_ELEMENTS = _CHUNK_ELEMENTS
