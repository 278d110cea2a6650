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
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "METRIC_NAMES",
    "classification_metrics",
    "bootstrap_ci",
    "evaluate_with_ci",
    "subgroup_metrics",
    "mean_sd",
]

METRIC_NAMES: tuple[str, ...] = ("accuracy", "balanced_accuracy", "auroc", "f1_macro")

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


_MISSING_STRINGS = {"", "unknown", "nan", "none", "null", "na", "n/a"}


def _subgroup_key(value: Any) -> str | None:
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

    y_true: [N]; proba: [N, C]; subgroups: {column: [N] values} (e.g. "sex", "fitzpatrick").
    Returns ``{column: {str(value): {"n": n, metric: {"value", "ci"}, ...}}}`` for values with
    ``>= min_size`` samples; missing/unknown values are skipped (see :func:`_subgroup_key`).
    Groups with a single class get ``auroc`` NaN (logged).
    """
    y, proba, _ = _check_inputs(y_true, proba)
    n = y.shape[0]
    out: dict[str, dict[str, dict]] = {}
    for column, values in subgroups.items():
        values = np.asarray(values, dtype=object)
        if values.shape != (n,):
            raise ValueError(f"subgroup {column!r} has shape {values.shape}, expected ({n},)")
        keys = np.array([_subgroup_key(v) for v in values], dtype=object)
        valid = np.array([k is not None for k in keys], dtype=bool)
        col: dict[str, dict] = {}
        for key in sorted({k for k in keys[valid]}, key=_sort_key):
            mask = valid & (keys == key)
            size = int(mask.sum())
            if size < min_size:
                logger.info("subgroup_metrics: skipping %s=%s (n=%d < min_size=%d)", column, key, size, min_size)
                continue
            col[key] = {"n": size, **evaluate_with_ci(y[mask], proba[mask], n_boot=n_boot, seed=seed)}
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
