"""Confidence intervals for means of per-unit scores (per image, per pair), used by the probes.

The probes (invariance, saliency, deep image prior) score a sample of images and report the mean
score with a 95 % Student-t interval over those images::

    mean +- t_{1 - alpha/2, n - 1} * sd(ddof=1) / sqrt(n)

A t-interval rather than a percentile bootstrap because the probes often score few images
(1-20): the bootstrap interval is too narrow for small n. ``n < 2`` gives no interval (``None``).
Non-finite scores are dropped (and counted) before the interval is computed.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from benchmark.records import metric


def mean_t_interval(values: Sequence[float] | np.ndarray, alpha: float = 0.05) -> tuple[float, tuple[float, float] | None, int]:
    """(mean, (lo, hi) or None, n used) of the finite ``values``; NaN mean when none is finite."""
    array = np.asarray(values, dtype=np.float64).ravel()
    finite = array[np.isfinite(array)]
    n = int(finite.size)
    if n == 0:
        return math.nan, None, 0
    mean = float(finite.mean())
    if n < 2:
        return mean, None, n
    from scipy import stats  # here, not at import: ~0.5 s that every CLI process would pay (the CLI imports this module)
    half = float(stats.t.ppf(1.0 - alpha / 2.0, n - 1) * finite.std(ddof=1) / math.sqrt(n))
    return mean, (mean - half, mean + half), n


def mean_metric(values: Sequence[float] | np.ndarray, alpha: float = 0.05, **more: Any) -> dict[str, Any]:
    """A record metric entry: mean with its t-interval, plus ``n``, ``sd`` and ``ci_method``."""
    array = np.asarray(values, dtype=np.float64).ravel()
    mean, ci, n = mean_t_interval(array, alpha)
    finite = array[np.isfinite(array)]
    sd = float(finite.std(ddof=1)) if finite.size > 1 else None
    dropped = int(array.size - finite.size)
    extra = {"n_nonfinite": dropped} if dropped else {}
    return metric(mean, ci, n=n, sd=sd, ci_method="t" if ci is not None else "none (n < 2)", **extra, **more)
