"""Calibration: expected calibration error before and after temperature scaling fitted on val.

* ECE (Guo et al. 2017; ERIC-T's ``temperature_scaling.py``): confidence = max class probability,
  ``ECE_BINS`` = 15 equal-width bins ``(i/15, (i+1)/15]``, ``ECE = sum_b n_b / N |acc_b - conf_b|``.
* Temperature scaling: one scalar T > 0 minimising the validation negative log-likelihood of
  ``softmax(log p / T)`` (equal to scaling the logits by 1/T, since a softmax ignores per-row
  shifts; probabilities are clipped at the smallest positive float before the log). Fitted on the
  validation split with a bounded scalar search over log T in [log 0.01, log 100]
  (``scipy.optimize.minimize_scalar``), then applied to the test predictions.
* CIs: the stratified percentile bootstrap of :mod:`benchmark.metrics` over test images (T fixed).

The evaluators call :func:`calibration_metrics` once; it returns record metric entries
``ece`` and ``ece_temperature_scaled`` (the latter carries ``temperature`` and ``temperature_at_bound``: a T at
the edge of the search range means the scaled model is close to predicting the class prior, so its low ECE says
little). ECE is lower-is-better
and never a primary metric.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import optimize

from benchmark.metrics import CHUNK_ELEMENTS, check_inputs, resample_indices
from benchmark.records import metric

ECE_BINS = 15
_TINY = np.finfo(np.float64).tiny


def _bins_confidence_correct(y: np.ndarray, proba: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)  # (lo, hi] bins
    return bins, confidence, correct


def _ece_for_resamples(bins: np.ndarray, confidence: np.ndarray, correct: np.ndarray, idx: np.ndarray,
                       n_bins: int) -> np.ndarray:
    """ECE of each resample idx [B, N] -> [B] (sum over bins of |sum correct - sum confidence| / N)."""
    b, n = idx.shape
    flat = (np.arange(b)[:, None] * n_bins + bins[idx]).ravel()
    gap = (np.bincount(flat, weights=correct[idx].ravel(), minlength=b * n_bins)
           - np.bincount(flat, weights=confidence[idx].ravel(), minlength=b * n_bins))
    return np.abs(gap.reshape(b, n_bins)).sum(axis=1) / n


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE of y_true [N] int under proba [N, C] with ``n_bins`` equal-width confidence bins."""
    y, proba, _ = check_inputs(y_true, proba)
    bins, confidence, correct = _bins_confidence_correct(y, proba, n_bins)
    return float(_ece_for_resamples(bins, confidence, correct, np.arange(len(y))[None, :], n_bins)[0])


def ece_with_ci(y_true: np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS, n_boot: int = 1000, seed: int = 0,
                alpha: float = 0.05) -> tuple[float, tuple[float, float]]:
    """(ECE, stratified percentile-bootstrap (1 - alpha) interval)."""
    y, proba, _ = check_inputs(y_true, proba)
    bins, confidence, correct = _bins_confidence_correct(y, proba, n_bins)
    value = float(_ece_for_resamples(bins, confidence, correct, np.arange(len(y))[None, :], n_bins)[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_ELEMENTS // len(y))
    reps = [_ece_for_resamples(bins, confidence, correct, resample_indices(y, min(chunk, n_boot - start), rng, True), n_bins)
            for start in range(0, n_boot, chunk)]
    lo, hi = np.percentile(np.concatenate(reps), [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return value, (float(lo), float(hi))


def _log_proba(proba: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(proba, _TINY))


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log proba / T): proba [N, C] -> [N, C]."""
    z = _log_proba(np.asarray(proba, dtype=np.float64)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


T_MIN, T_MAX = 0.01, 100.0  # the temperature search range


def fit_temperature(y_val: np.ndarray, proba_val: np.ndarray) -> float:
    """The T in [T_MIN, T_MAX] minimising the mean NLL of softmax(log proba_val / T) on labels y_val [N]."""
    y, proba, _ = check_inputs(y_val, proba_val)
    z = _log_proba(proba)
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        scaled = z / math.exp(log_t)
        top = scaled.max(axis=1)
        return float(np.mean(top + np.log(np.exp(scaled - top[:, None]).sum(axis=1)) - scaled[rows, y]))
    result = optimize.minimize_scalar(nll, bounds=(math.log(T_MIN), math.log(T_MAX)), method="bounded",
                                      options={"xatol": 1e-6})
    return float(math.exp(result.x))


def calibration_metrics(val_y: np.ndarray, val_proba: np.ndarray, test_y: np.ndarray, test_proba: np.ndarray,
                        n_boot: int = 1000, seed: int = 0, n_bins: int = ECE_BINS) -> dict[str, dict]:
    """Record entries ``ece`` and ``ece_temperature_scaled`` (T fitted on val [M], applied to test [N])."""
    temperature = fit_temperature(val_y, val_proba)
    # the search hit its bound (within 1 %): the confidences carry (almost) no signal
    at_bound = not 1.01 * T_MIN < temperature < 0.99 * T_MAX
    before, before_ci = ece_with_ci(test_y, test_proba, n_bins, n_boot, seed)
    after, after_ci = ece_with_ci(test_y, apply_temperature(test_proba, temperature), n_bins, n_boot, seed)
    facts = {"bins": n_bins, "binning": "equal-width on max-probability confidence", "lower_is_better": True}
    return {"ece": metric(before, before_ci, **facts),
            "ece_temperature_scaled": metric(after, after_ci, temperature=temperature, temperature_fitted_on="val",
                                             temperature_at_bound=at_bound, **facts)}
