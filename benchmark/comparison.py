"""Pairing records and comparing encoders: what ``cli.py compare`` and the leaderboard's comparison sections use.

Two records are paired only when they share a protocol hash (same evaluator options, dataset
manifest, splits and seed) and both keep a verified side file (:mod:`benchmark.predictions`) over
the same test units: the same image ids with the same labels, or the same episodes (fingerprint).
Anything else is a :class:`ComparisonError` whose message says what differs.

The test of a paired difference in the primary metric (:func:`paired_difference`):

* per-episode scores (few-shot): paired t over episodes;
* ``auroc`` with one prediction set per record: DeLong (binary, or the class-stratified macro
  one-vs-rest extension, :mod:`benchmark.stats`);
* everything else (accuracy, balanced accuracy, macro F1; k-shot replicates): the paired
  stratified bootstrap.

Within a leaderboard column (:func:`analyse_column`) every encoder is compared with the column's
best (highest point estimate); the p-values are Holm-adjusted over those comparisons; encoders
whose adjusted p is >= ``ALPHA`` share rank 1 (:func:`benchmark.stats.ci_aware_ranks`); and the
bootstrap probability of being best is computed from one set of resamples shared by all encoders.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from benchmark.predictions import Predictions, PredictionsError, has_predictions, load_predictions
from benchmark.records import ResultRecord, record_path
from benchmark import stats

log = logging.getLogger(__name__)

ALPHA = stats.ALPHA
COMPARE_N_BOOT = 2000  # cli.py compare
LEADERBOARD_N_BOOT = 2000  # per column in the leaderboard: p-values down to 2/2001 survive Holm over <= ~50 encoders
VALUE_TOLERANCE = 1e-6  # the side file must reproduce the record's primary value


class ComparisonError(ValueError):
    """Two records cannot be paired; the message names what differs and what to do."""


def metric_value(entry: dict) -> float:
    """A metric entry's value as a float (None, missing or non-numeric -> NaN; 0.0 stays 0.0)."""
    value = entry.get("value")
    return float(value) if isinstance(value, (int, float)) else math.nan


def label(record: ResultRecord) -> str:
    i = record.identity
    return f"{i.evaluator}/{i.variant} {i.encoder} on {i.dataset}"


@dataclass
class Paired:
    """Aligned test outcomes of two records (B reordered to A's ids)."""

    unit: str
    labels: np.ndarray | None  # [N]
    a: np.ndarray  # [R, N, C] probabilities or [E] scores
    b: np.ndarray


def check_pairable(a: ResultRecord, b: ResultRecord) -> None:
    """Raise ComparisonError unless ``a`` and ``b`` ran one protocol."""
    if a.identity == b.identity:
        raise ComparisonError(f"{label(a)} is compared with itself; name two different encoders")
    if a.protocol_hash != b.protocol_hash:
        raise ComparisonError(
            f"{label(a)} (protocol {a.protocol_hash}) and {label(b)} (protocol {b.protocol_hash}) ran different "
            f"protocols (options, dataset, splits or seed differ), so their test items are never paired; rerun both "
            f"with the same evaluator options, --seed and split")
    if a.primary_metric != b.primary_metric:
        raise ComparisonError(f"{label(a)} and {label(b)} have different primary metrics "
                              f"({a.primary_metric} vs {b.primary_metric})")


def align(a: ResultRecord, pa: Predictions, b: ResultRecord, pb: Predictions) -> Paired:
    """Pair two verified side files unit by unit (image id or episode), or raise ComparisonError."""
    if pa.unit != pb.unit:
        raise ComparisonError(f"{label(a)} keeps per-{pa.unit} and {label(b)} per-{pb.unit} outcomes; cannot pair")
    if pa.fingerprint != pb.fingerprint:
        what = "episodes" if pa.unit == "episode" else "replicates (e.g. k-shot supports)"
        raise ComparisonError(f"{label(a)} and {label(b)} did not run the same {what} (fingerprints differ); "
                              f"rerun both with the same --seed")
    if pa.unit == "episode":
        if len(pa.scores) != len(pb.scores):
            raise ComparisonError(f"{label(a)} ran {len(pa.scores)} episodes and {label(b)} {len(pb.scores)}")
        return Paired("episode", None, pa.scores, pb.scores)
    ids_a, ids_b = pa.ids.tolist(), pb.ids.tolist()
    if set(ids_a) != set(ids_b):
        only_a, only_b = sorted(set(ids_a) - set(ids_b)), sorted(set(ids_b) - set(ids_a))
        raise ComparisonError(f"{label(a)} and {label(b)} were scored on different test images "
                              f"({len(only_a)} only in A, e.g. {only_a[:3]}; {len(only_b)} only in B, e.g. {only_b[:3]})")
    position = {image: i for i, image in enumerate(ids_b)}
    order = np.array([position[image] for image in ids_a])
    if not np.array_equal(pa.labels, pb.labels[order]):
        bad = int(np.sum(pa.labels != pb.labels[order]))
        raise ComparisonError(f"{label(a)} and {label(b)} disagree on the labels of {bad} test images")
    if pa.probabilities.shape[0] != pb.probabilities.shape[0] or pa.n_classes != pb.n_classes:
        raise ComparisonError(f"{label(a)} and {label(b)} have prediction sets of shapes "
                              f"{pa.probabilities.shape} and {pb.probabilities.shape}")
    return Paired("image", pa.labels, pa.probabilities, pb.probabilities[:, order])


def _check_reproduces(record: ResultRecord, predictions: Predictions, value: float) -> None:
    recorded = record.metrics[record.primary_metric].get("value")
    if recorded is None or not math.isfinite(value) or abs(value - float(recorded)) > VALUE_TOLERANCE:
        raise ComparisonError(f"{label(record)}: its side file gives {record.primary_metric} = {value:.6f} but the "
                              f"record says {recorded}; the side file is inconsistent, rerun the cell with --overwrite")


def paired_difference(a: ResultRecord, b: ResultRecord, paired: Paired, n_boot: int = COMPARE_N_BOOT,
                      seed: int = 0, alpha: float = ALPHA) -> stats.PairedDifference:
    """The test of A - B in the primary metric chosen for the unit and metric (module docstring)."""
    metric = a.primary_metric
    if paired.unit == "episode":
        result = stats.paired_episodes(paired.a, paired.b, metric, alpha)
    elif metric == "auroc" and paired.a.shape[0] == 1:
        result = stats.delong_test(paired.labels, paired.a[0], paired.b[0], alpha)
    else:
        result = stats.paired_bootstrap(paired.labels, paired.a, paired.b, metric, n_boot, seed, alpha)
    return result


@dataclass
class LoadedRecord:
    record: ResultRecord
    path: Path
    predictions: Predictions | None = None
    problem: str = ""


def load_with_predictions(record: ResultRecord, results_dir: Path) -> LoadedRecord:
    """The record with its verified side file, or with the reason it has none usable."""
    path = record_path(results_dir, record.identity)
    if not has_predictions(record):
        return LoadedRecord(record, path, None, "no per-item predictions in the record")
    try:
        return LoadedRecord(record, path, load_predictions(record, path))
    except PredictionsError as error:
        return LoadedRecord(record, path, None, str(error))


def compare(a: ResultRecord, b: ResultRecord, results_dir: Path, n_boot: int = COMPARE_N_BOOT, seed: int = 0,
            alpha: float = ALPHA) -> stats.PairedDifference:
    """Paired difference A - B of two records in ``results_dir`` (ComparisonError / PredictionsError if impossible)."""
    check_pairable(a, b)
    pa = load_predictions(a, record_path(results_dir, a.identity))
    pb = load_predictions(b, record_path(results_dir, b.identity))
    paired = align(a, pa, b, pb)
    result = paired_difference(a, b, paired, n_boot, seed, alpha)
    _check_reproduces(a, pa, result.value_a)
    _check_reproduces(b, pb, result.value_b)
    return result


# -- one leaderboard column ------------------------------------------------------------------------
@dataclass
class ColumnEntry:
    encoder: str
    value: float
    vs_best: stats.PairedDifference | None = None  # best - this encoder
    p_holm: float = math.nan
    rank: float = math.nan  # CI-aware rank
    plain_rank: float = math.nan
    p_best: float = math.nan  # bootstrap probability of being best
    note: str = ""


@dataclass
class ColumnAnalysis:
    best: str
    entries: list[ColumnEntry]
    method: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def paired(self) -> bool:
        return any(e.vs_best is not None for e in self.entries)


def analyse_column(loaded: list[LoadedRecord], n_boot: int = LEADERBOARD_N_BOOT, seed: int = 0,
                   alpha: float = ALPHA) -> ColumnAnalysis:
    """Paired comparisons with the best, Holm correction, CI-aware ranks and P(best) for one column.

    ``loaded``: the column's records (one protocol hash), each with its side file or the reason it has none.
    """
    values = np.array([metric_value(item.record.metrics[item.record.primary_metric]) for item in loaded])
    finite = np.where(np.isfinite(values), values, -np.inf)
    best_index = int(np.argmax(finite))
    best = loaded[best_index]
    plain = rankdata(-finite, method="min")
    entries = [ColumnEntry(item.record.identity.encoder, float(values[i]), plain_rank=float(plain[i]))
               for i, item in enumerate(loaded)]
    analysis = ColumnAnalysis(best.record.identity.encoder, entries)
    p_raw = np.full(len(loaded), np.nan)
    aligned: dict[int, Paired] = {}
    for i, item in enumerate(loaded):
        if i == best_index:
            continue
        if best.predictions is None or item.predictions is None:
            reason = best.problem if best.predictions is None else item.problem
            entries[i].note = "not paired: " + reason
            continue
        try:
            check_pairable(best.record, item.record)
            paired = align(best.record, best.predictions, item.record, item.predictions)
            result = paired_difference(best.record, item.record, paired, n_boot, seed, alpha)
            _check_reproduces(best.record, best.predictions, result.value_a)
            _check_reproduces(item.record, item.predictions, result.value_b)
        except (ComparisonError, ValueError) as error:
            entries[i].note = f"not paired: {error}"
            continue
        aligned[i] = paired
        entries[i].vs_best, p_raw[i] = result, result.p_value
        analysis.method = result.method
    adjusted = stats.holm(p_raw)
    ranks = stats.ci_aware_ranks(finite, adjusted, alpha)
    for i, entry in enumerate(entries):
        entry.p_holm = float(adjusted[i])
        entry.rank = float(ranks[i])
    members = [best_index] + sorted(aligned)
    if len(members) > 1:
        probabilities = _best_probabilities(best, aligned, members, n_boot, seed)
        for i, p in zip(members, probabilities):
            entries[i].p_best = float(p)
    return analysis


def _best_probabilities(best: LoadedRecord, aligned: dict[int, Paired], members: list[int], n_boot: int,
                        seed: int) -> np.ndarray:
    first = aligned[members[1]]
    if first.unit == "episode":
        scores = np.stack([first.a] + [aligned[i].b for i in members[1:]])  # [K, E]
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, scores.shape[1], size=(n_boot, scores.shape[1]))
        means = scores[:, idx].mean(axis=2)  # [K, B]
        winners = means == means.max(axis=0, keepdims=True)
        return (winners / winners.sum(axis=0, keepdims=True)).mean(axis=1)
    sets = [first.a] + [aligned[i].b for i in members[1:]]
    return stats.best_probability(first.labels, sets, best.record.primary_metric, n_boot, seed)


# -- finding the records to compare ----------------------------------------------------------------
def matching_pairs(records: list[ResultRecord], encoder_a: str, encoder_b: str, dataset: str | None = None,
                   evaluator: str | None = None, variant: str | None = None) -> list[tuple[ResultRecord, ResultRecord]]:
    """(A, B) record pairs with one (evaluator, variant, dataset), filtered; ComparisonError when none exists."""
    def chosen(record: ResultRecord) -> bool:
        i = record.identity
        return ((dataset is None or i.dataset == dataset) and (evaluator is None or i.evaluator == evaluator)
                and (variant is None or i.variant == variant))
    by_encoder: dict[str, dict[tuple, ResultRecord]] = {encoder_a: {}, encoder_b: {}}
    for record in records:
        i = record.identity
        if i.encoder in by_encoder and chosen(record):
            by_encoder[i.encoder][(i.evaluator, i.variant, i.dataset)] = record
    where = ", ".join(f"{k} {v}" for k, v in (("dataset", dataset), ("evaluator", evaluator), ("variant", variant)) if v)
    for name in (encoder_a, encoder_b):
        if not by_encoder[name]:
            known = sorted({r.identity.encoder for r in records})
            raise ComparisonError(f"no record of encoder '{name}'" + (f" with {where}" if where else "")
                                  + f"; encoders with records: {', '.join(known) or 'none'}")
    shared = sorted(set(by_encoder[encoder_a]) & set(by_encoder[encoder_b]))
    if not shared:
        raise ComparisonError(f"'{encoder_a}' and '{encoder_b}' have no (evaluator, variant, dataset) in common"
                              + (f" with {where}" if where else ""))
    return [(by_encoder[encoder_a][key], by_encoder[encoder_b][key]) for key in shared]


# -- subgroups -------------------------------------------------------------------------------------
SUBGROUP_MIN_N = 30  # subgroups with fewer test images are shown, marked small, and never ranked


@dataclass
class SubgroupGap:
    """Worst and best subgroup of one column (e.g. Fitzpatrick type) for one record, and their gap."""

    column: str
    worst: str
    best: str
    worst_value: float
    best_value: float
    gap: float  # best - worst
    ci: tuple[float, float] | None  # bootstrap over the images of both subgroups (needs the side file)
    n_ranked: int


def subgroup_gap(record: ResultRecord, column: str, predictions: Predictions | None, min_n: int = SUBGROUP_MIN_N,
                 n_boot: int = LEADERBOARD_N_BOOT, seed: int = 0) -> SubgroupGap | None:
    """Best-worst gap in the primary metric among the record's subgroups of ``column`` with n >= ``min_n``.

    The CI resamples each of the two subgroups on its own (stratified by class; they are disjoint,
    so independent) from the side file; without a usable side file the gap has no CI.
    """
    metric = record.primary_metric
    groups = {key: entry for key, entry in record.subgroups.get(column, {}).items()
              if isinstance(entry, dict) and entry.get("n", 0) >= min_n
              and isinstance(entry.get(metric, {}).get("value"), (int, float))
              and math.isfinite(entry[metric]["value"])}
    if len(groups) < 2:
        return None
    ordered = sorted(groups, key=lambda key: groups[key][metric]["value"])
    worst, best = ordered[0], ordered[-1]
    worst_value, best_value = groups[worst][metric]["value"], groups[best][metric]["value"]
    ci = None
    if predictions is not None and predictions.unit == "image" and column in predictions.subgroups:
        values = predictions.subgroups[column]
        reps = []
        for offset, key in enumerate((best, worst)):
            mask = values == key
            _, rep = stats.replicate_metric(predictions.labels[mask], [predictions.probabilities[:, mask]], metric,
                                            n_boot, seed + offset)
            reps.append(rep[0])
        d = reps[0] - reps[1]
        d = d[np.isfinite(d)]
        if d.size:
            lo, hi = np.percentile(d, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
            ci = (float(lo), float(hi))
    return SubgroupGap(column, worst, best, float(worst_value), float(best_value), float(best_value - worst_value), ci,
                       len(groups))
