"""Statistics for comparing encoders: paired tests, CI-aware ranks, cross-dataset rank tests.

Paired differences (A - B on the same test items, the same protocol):

* :func:`paired_bootstrap`: any metric of :mod:`benchmark.metrics`; each resample draws the same
  test indices for both encoders, stratified by class exactly as the record CIs are
  (``benchmark.metrics``), so the interval conditions on the test set's class counts. With
  replicates (k-shot linear: one prediction set per support seed, the same supports for both
  encoders) every resample also redraws the seeds with replacement, the same seeds for both
  (a two-level bootstrap: test images and support draws). CI: percentile. p-value: two-sided,
  from inverting the percentile interval, ``p = min(1, 2 min(P*(d <= 0), P*(d >= 0)))`` with the
  ``(count + 1) / (B + 1)`` correction, so ``p < alpha`` exactly when the (1 - alpha) interval
  excludes 0.
* :func:`delong_test`: AUROC. Binary: DeLong, DeLong & Clarke-Pearson (1988) with the fast
  mid-rank structural components of Sun & Xu (2014). Multi-class macro one-vs-rest AUROC (the
  harness's ``auroc``): the mean of the per-class AUROCs is a generalised U-statistic over the K
  class samples; its variance is estimated from DeLong's structural components of every
  one-vs-rest AUROC, combined per image and summed over classes as ``sum_c S_c^2 / n_c`` (S_c^2:
  the sample variance, within true class c, of an image's combined component). Conditioning on the
  class counts matches the stratified bootstrap; for two classes it is exactly DeLong. Normal
  interval and two-sided z-test.
* :func:`paired_episodes`: few-shot. The same seed gives the same episodes (checked by the side
  files' fingerprints), so the per-episode differences are paired: mean, Student-t interval and
  ``scipy.stats.ttest_rel`` p-value (the few-shot record CIs are normal intervals over episodes too).

Ranks and multiple comparisons: :func:`holm` (Holm 1979 step-down adjusted p-values) and
:func:`ci_aware_ranks`. Across datasets (Demsar, JMLR 2006): :func:`friedman_test` (ranks with
average ties, ``scipy.stats.friedmanchisquare`` and the Iman-Davenport F) and
:func:`nemenyi_critical_difference` (``q_alpha`` from ``scipy.stats.studentized_range``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats as scipy_stats

from benchmark.metrics import CHUNK_ELEMENTS, check_inputs, metrics_for_resamples, resample_indices

ALPHA = 0.05
N_BOOT = 2000


@dataclass(frozen=True)
class PairedDifference:
    """A - B in one metric on paired test units, with its (1 - alpha) interval and p-value."""

    metric: str
    value_a: float
    value_b: float
    difference: float
    ci: tuple[float, float]
    p_value: float
    method: str
    n: int

    def to_dict(self) -> dict:
        return {**asdict(self), "ci": list(self.ci)}


def _as_replicates(proba: np.ndarray) -> np.ndarray:
    proba = np.asarray(proba, dtype=np.float64)
    return proba[None] if proba.ndim == 2 else proba


def replicate_metric(y: np.ndarray, probas: Sequence[np.ndarray], metric: str, n_boot: int = N_BOOT, seed: int = 0,
                     stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Point values [K] and bootstrap replicates [K, B] of ``metric`` for K prediction sets on one test set.

    y: [N]; each of probas: [N, C] or [R, N, C] (R replicates, averaged). Every resample uses the
    same test indices (and the same replicate draw) for all K sets: the pairing.
    """
    sets = [_as_replicates(p) for p in probas]
    replicates = {s.shape[0] for s in sets}
    if len(replicates) != 1:
        raise ValueError(f"prediction sets have different numbers of replicates {sorted(replicates)}")
    r = replicates.pop()
    y_checked = check_inputs(y, sets[0][0])[0]
    n = y_checked.shape[0]
    for s in sets:
        for rep in s:
            check_inputs(y_checked, rep)
    full = np.arange(n)[None, :]
    points = np.array([np.mean([metrics_for_resamples(y_checked, rep, full, [metric])[metric][0] for rep in s])
                       for s in sets])
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_ELEMENTS // n)
    out = np.empty((len(sets), n_boot))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = resample_indices(y_checked, b, rng, stratify)
        seeds = rng.integers(0, r, size=(b, r)) if r > 1 else np.zeros((b, 1), dtype=np.int64)
        for k, s in enumerate(sets):
            per_rep = np.stack([metrics_for_resamples(y_checked, rep, idx, [metric])[metric] for rep in s])  # [R, b]
            out[k, start:start + b] = per_rep[seeds, np.arange(b)[:, None]].mean(axis=1)
    return points, out


def inverted_percentile_p(replicates: np.ndarray) -> float:
    """Two-sided p-value of ``difference = 0`` from bootstrap replicates of the difference (see module doc)."""
    d = replicates[np.isfinite(replicates)]
    if d.size == 0:
        return math.nan
    below = (np.count_nonzero(d <= 0) + 1) / (d.size + 1)
    above = (np.count_nonzero(d >= 0) + 1) / (d.size + 1)
    return float(min(1.0, 2.0 * min(below, above)))


def paired_bootstrap(y: np.ndarray, proba_a: np.ndarray, proba_b: np.ndarray, metric: str, n_boot: int = N_BOOT,
                     seed: int = 0, alpha: float = ALPHA, stratify: bool = True) -> PairedDifference:
    """Paired (same resampled indices) bootstrap of ``metric(A) - metric(B)``.

    y: [N]; proba_a, proba_b: [N, C] or [R, N, C] (R replicates, e.g. k-shot support seeds).
    """
    points, reps = replicate_metric(y, [proba_a, proba_b], metric, n_boot, seed, stratify)
    d = reps[0] - reps[1]
    finite = d[np.isfinite(d)]
    lo, hi = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)]) if finite.size else (math.nan, math.nan)
    r = _as_replicates(proba_a).shape[0]
    method = (f"paired {'stratified ' if stratify else ''}bootstrap ({n_boot} resamples"
              + (f", {r} replicates redrawn" if r > 1 else "") + ")")
    return PairedDifference(metric, float(points[0]), float(points[1]), float(points[0] - points[1]),
                            (float(lo), float(hi)), inverted_percentile_p(d), method, int(len(y)))


def best_probability(y: np.ndarray, probas: Sequence[np.ndarray], metric: str, n_boot: int = N_BOOT,
                     seed: int = 0) -> np.ndarray:
    """Bootstrap probability [K] that each prediction set has the highest ``metric`` (ties shared)."""
    _, reps = replicate_metric(y, probas, metric, n_boot, seed)
    top = reps.max(axis=0, keepdims=True)
    winners = (reps == top) & np.isfinite(reps)
    share = winners / np.maximum(winners.sum(axis=0, keepdims=True), 1)
    return share.mean(axis=1)


# -- DeLong ----------------------------------------------------------------------------------------
def _structural_components(score: np.ndarray, positive: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(AUC, V10 [m] for the positives, V01 [n] for the negatives) with mid-ranks (Sun & Xu 2014)."""
    pos, neg = score[positive], score[~positive]
    m, n = len(pos), len(neg)
    rank_all = scipy_stats.rankdata(np.concatenate([pos, neg]))
    v10 = (rank_all[:m] - scipy_stats.rankdata(pos)) / n
    v01 = 1.0 - (rank_all[m:] - scipy_stats.rankdata(neg)) / m
    return float(v10.mean()), v10, v01


def auroc_components(y: np.ndarray, proba: np.ndarray) -> tuple[float, np.ndarray]:
    """(AUROC as ``benchmark.metrics`` defines it, per-image combined structural component [N]).

    Binary: the AUROC of ``proba[:, 1]``; multi-class: the mean one-vs-rest AUROC over the classes
    present in ``y``. The variance of the AUROC is ``sum_c var_c(component) / n_c`` (module doc).
    """
    y, proba, c = check_inputs(y, proba)
    classes = [1] if c == 2 else [int(k) for k in np.unique(y)]
    if len(np.unique(y)) < 2:
        raise ValueError("AUROC needs at least two classes present in the test labels")
    counts = np.bincount(y, minlength=c).astype(np.float64)
    component = np.zeros(len(y))
    aucs = []
    for k in classes:
        positive = y == k
        auc, v10, v01 = _structural_components(proba[:, k], positive)
        aucs.append(auc)
        n_neg = float((~positive).sum())
        component[positive] += v10
        component[~positive] += v01 * counts[y[~positive]] / n_neg  # negatives of class c weigh n_c / n_neg
    weight = 1.0 / len(classes)
    return float(np.mean(aucs)), component * weight


def _stratified_variance(component: np.ndarray, y: np.ndarray) -> float:
    total = 0.0
    for k in np.unique(y):
        part = component[y == k]
        if len(part) > 1:
            total += float(part.var(ddof=1)) / len(part)
    return total


def delong_variance(y: np.ndarray, proba: np.ndarray) -> tuple[float, float]:
    """(AUROC, DeLong variance) of one prediction set; y: [N], proba: [N, C]."""
    auc, component = auroc_components(y, proba)
    return auc, _stratified_variance(component, np.asarray(y).astype(np.int64))


def delong_test(y: np.ndarray, proba_a: np.ndarray, proba_b: np.ndarray, alpha: float = ALPHA) -> PairedDifference:
    """DeLong test of AUROC(A) - AUROC(B) on the same test images (binary, or macro one-vs-rest)."""
    y = np.asarray(y).astype(np.int64)
    auc_a, comp_a = auroc_components(y, proba_a)
    auc_b, comp_b = auroc_components(y, proba_b)
    diff = auc_a - auc_b
    se = math.sqrt(max(_stratified_variance(comp_a - comp_b, y), 0.0))
    if se == 0.0:
        p = 1.0 if diff == 0 else 0.0
    else:
        p = float(2 * scipy_stats.norm.sf(abs(diff) / se))
    z = float(scipy_stats.norm.ppf(1 - alpha / 2))
    kind = "binary" if np.asarray(proba_a).shape[1] == 2 else "macro one-vs-rest, class-stratified"
    return PairedDifference("auroc", auc_a, auc_b, diff, (diff - z * se, diff + z * se), p, f"DeLong ({kind})", len(y))


# -- episodes --------------------------------------------------------------------------------------
def paired_episodes(scores_a: np.ndarray, scores_b: np.ndarray, metric: str = "accuracy",
                    alpha: float = ALPHA) -> PairedDifference:
    """Paired t over episodes (the same episodes for both): mean difference, t interval, ttest_rel p-value."""
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"paired episodes need two equal-length score vectors of >= 2 episodes, got {a.shape} and {b.shape}")
    d = a - b
    diff = float(d.mean())
    if np.all(d == d[0]):  # no spread: the t statistic is undefined
        return PairedDifference(metric, float(a.mean()), float(b.mean()), diff, (diff, diff),
                                1.0 if diff == 0 else 0.0, "paired t over episodes", len(a))
    result = scipy_stats.ttest_rel(a, b)
    ci = result.confidence_interval(1 - alpha)
    return PairedDifference(metric, float(a.mean()), float(b.mean()), diff, (float(ci.low), float(ci.high)),
                            float(result.pvalue), "paired t over episodes", len(a))


# -- multiple comparisons and ranks ----------------------------------------------------------------
def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values (NaN stays NaN and is not counted)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    m = len(valid)
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for i, index in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[index]))
        out[index] = running
    return out


def ci_aware_ranks(values: Sequence[float], adjusted_p_vs_best: Sequence[float], alpha: float = ALPHA) -> np.ndarray:
    """Competition ranks in which every entry not significantly worse than the best shares rank 1.

    values: point estimates (higher is better); adjusted_p_vs_best: Holm-adjusted p-value of each
    entry's paired difference to the best (the best itself and unpairable entries: NaN). An entry
    with adjusted p >= alpha (or the best, or tied with it) gets rank 1; the others keep their
    position in the order of point estimates (1, 1, 3, 4, ...). Unpairable non-best entries are
    never promoted.
    """
    v = np.asarray(values, dtype=np.float64)
    p = np.asarray(adjusted_p_vs_best, dtype=np.float64)
    plain = scipy_stats.rankdata(-v, method="min").astype(float)
    tied = (v == np.nanmax(v)) | (np.isfinite(p) & (p >= alpha))
    return np.where(tied, 1.0, plain)


# -- across datasets -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FriedmanResult:
    """Friedman test over N datasets (blocks) x k encoders (Demsar 2006, section 3.2.2)."""

    encoders: list[str]
    mean_ranks: list[float]
    n_datasets: int
    statistic: float  # chi-square_F
    p_value: float
    iman_davenport_f: float
    iman_davenport_p: float
    critical_difference: float  # Nemenyi CD at alpha
    alpha: float

    def to_dict(self) -> dict:
        return asdict(self)


def rank_matrix(scores: np.ndarray) -> np.ndarray:
    """Ranks [N, k] within each row of scores [N datasets, k encoders]: 1 = best (highest), ties averaged."""
    return np.vstack([scipy_stats.rankdata(-row, method="average") for row in np.asarray(scores, dtype=np.float64)])


def nemenyi_critical_difference(k: int, n: int, alpha: float = ALPHA) -> float:
    """Nemenyi CD = q_alpha sqrt(k (k + 1) / (6 N)), q_alpha = studentized range(1 - alpha; k, inf) / sqrt(2)."""
    if k < 2 or n < 1:
        raise ValueError(f"the critical difference needs k >= 2 encoders and N >= 1 datasets (got {k}, {n})")
    q = float(scipy_stats.studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)
    return q * math.sqrt(k * (k + 1) / (6.0 * n))


def friedman_test(scores: np.ndarray, encoders: Sequence[str], alpha: float = ALPHA) -> FriedmanResult:
    """Friedman test of scores [N datasets, k encoders] (higher is better), plus mean ranks and Nemenyi CD."""
    scores = np.asarray(scores, dtype=np.float64)
    n, k = scores.shape
    if n < 3 or k < 3:
        raise ValueError(f"the Friedman test needs >= 3 datasets and >= 3 encoders with a result on every one "
                         f"(got {n} datasets x {k} encoders)")
    if not np.all(np.isfinite(scores)):
        raise ValueError("the Friedman test needs a finite score for every encoder on every dataset")
    ranks = rank_matrix(scores)
    result = scipy_stats.friedmanchisquare(*scores.T)
    chi2 = float(result.statistic)
    if n * (k - 1) - chi2 > 0:
        f = (n - 1) * chi2 / (n * (k - 1) - chi2)
        f_p = float(scipy_stats.f.sf(f, k - 1, (k - 1) * (n - 1)))
    else:  # identical rankings on every dataset
        f, f_p = math.inf, 0.0
    return FriedmanResult(list(encoders), [float(r) for r in ranks.mean(axis=0)], n, chi2, float(result.pvalue),
                          float(f), f_p, nemenyi_critical_difference(k, n, alpha), alpha)


def cliques(mean_ranks: Sequence[float], critical_difference: float) -> list[tuple[int, int]]:
    """Maximal runs (first, last position in rank order) whose mean ranks differ by < CD (the CD-diagram bars)."""
    order = np.argsort(mean_ranks, kind="stable")
    r = np.asarray(mean_ranks, dtype=np.float64)[order]
    runs = []
    for i in range(len(r)):
        j = i
        while j + 1 < len(r) and r[j + 1] - r[i] < critical_difference:
            j += 1
        if j > i and not any(a <= i and j <= b for a, b in runs):
            runs.append((i, j))
    return runs
