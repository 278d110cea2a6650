"""Leaderboards: a pure function of a results folder to markdown (GitHub tables) and CSV.

One table per (evaluator, variant): encoders x datasets, each cell the primary metric with its
95 % CI and the CI-aware rank within the column, the metric named in the header, a mean rank and
cost columns. Records of one column whose protocol hashes differ are never merged: they go into
separate columns tagged with the hash, and a note says so. Corrupt records are reported and
skipped. Records that ask for it (``extra["detail_metrics"]``) also get a per-metric table.

After each main table, where the records allow it (docs/comparison.md):

* paired differences to the column's best (paired bootstrap / DeLong / paired t over episodes,
  Holm-adjusted p, bootstrap probability of being best); the main table's ranks are CI-aware:
  encoders not significantly worse than the best share rank 1;
* across datasets (>= 3 datasets, >= 3 encoders with a result on each): mean ranks, Friedman test,
  Iman-Davenport F and the Nemenyi critical difference (Demsar 2006);
* per-subgroup tables (value, CI, n) with the worst subgroup and the best-worst gap (CI);
* calibration: ECE before and after temperature scaling (linear probe, fine-tuning).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from benchmark import comparison, stats
from benchmark.atomic import atomic_write_text
from benchmark.calibration import ECE_BINS
from benchmark.references import reference_rows
from benchmark.records import ResultRecord, load_records

EVALUATOR_ORDER = ["linear", "knn", "fewshot", "kshot-linear", "finetune", "invariance", "multiview-invariance",
                   "saliency", "dip"]
CALIBRATION_METRICS = ("ece", "ece_temperature_scaled")

LEGEND = (
    "Cells: primary metric on the test split, 95 % bootstrap CI in brackets (few-shot: ±1.96 sd/sqrt(episodes)); "
    "a mean over seeds without a CI shows ± its sd (k-shot linear, MedMNIST seeds); rank within the column after '#'. "
    "Columns with different protocol hashes are never merged.\n\n"
    "**Ranks are CI-aware.** In each column every encoder is compared with the best (highest point estimate) on the "
    "same test items: paired stratified bootstrap of the difference (2,000 resamples, the same resampled test images "
    "for both), DeLong's test for AUROC, a paired t-test over the same episodes for few-shot. The p-values are "
    f"Holm-adjusted over the column's comparisons; an encoder whose adjusted p is >= {stats.ALPHA} shares rank 1, the "
    "others keep their position (1, 1, 3, ...). '†' marks a plain rank by point estimate: that record could not be "
    "paired with the column's best (no per-item side file, e.g. records of probes or of older versions). Across >= 3 datasets: mean ranks (ties averaged), Friedman test and the "
    f"Nemenyi critical difference at alpha = {stats.ALPHA} (Demsar, JMLR 2006). Subgroups with fewer than "
    f"{comparison.SUBGROUP_MIN_N} test images are marked 'small' and never ranked. ECE: {ECE_BINS} equal-width "
    "confidence bins, before and after temperature scaling fitted on the validation split.")


@dataclass
class Leaderboard:
    long: pd.DataFrame  # one row per record (the CSV)
    tables: list[tuple[str, pd.DataFrame]]  # (title, display table)
    notes: list[str] = field(default_factory=list)
    errors: list[tuple[Path, str]] = field(default_factory=list)
    columns: dict[tuple[str, str, str], comparison.ColumnAnalysis] = field(default_factory=dict)
    friedman: dict[tuple[str, str], stats.FriedmanResult] = field(default_factory=dict)
    gaps: list[dict[str, Any]] = field(default_factory=list)  # one per (record, subgroup column)
    records: list[ResultRecord] = field(default_factory=list)
    table_keys: list[tuple[str, str]] = field(default_factory=list)  # (evaluator, variant) of each table


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _fmt(value: float | None, ci: list | tuple | None, sd: float | None = None, signed: bool = False) -> str:
    """``0.500 [0.400, 0.600]`` with a CI; ``0.500 ± 0.020`` for a mean over seeds without one."""
    if not _finite(value):
        return "n/a"
    number = "{:+.3f}" if signed else "{:.3f}"
    value, ci = value + 0.0, None if ci is None else [None if c is None else c + 0.0 for c in ci]  # no "-0.000"
    text = number.format(value)
    if ci and ci[0] is not None and ci[1] is not None and _finite(ci[0]) and _finite(ci[1]):
        text += f" [{number.format(ci[0])}, {number.format(ci[1])}]"
    elif _finite(sd):
        text += f" ± {sd:.3f}"
    return text


def _p(value: float) -> str:
    return "" if not _finite(value) else ("< 0.001" if value < 0.001 else f"{value:.3f}")


def _share(value: float) -> str:
    return f"{value:.3f}" if _finite(value) else ""


def _long_rows(records: list[ResultRecord]) -> pd.DataFrame:
    rows = []
    for record in records:
        primary = record.metrics[record.primary_metric]
        ci = primary.get("ci") or [None, None]
        provenance = record.provenance
        calibration = {name: record.metrics.get(name, {}).get("value") for name in CALIBRATION_METRICS}
        rows.append({
            "evaluator": record.identity.evaluator, "variant": record.identity.variant,
            "dataset": record.identity.dataset, "encoder": record.identity.encoder,
            "encoder_kind": provenance.get("encoder_kind", ""), "metric": record.primary_metric,
            "value": primary.get("value"), "ci_low": ci[0], "ci_high": ci[1], "sd": primary.get("sd"),
            "protocol_hash": record.protocol_hash,
            "images_per_second": provenance.get("cost_images_per_second"),
            "wall_seconds": provenance.get("wall_seconds"), "device": provenance.get("device"),
            "git_commit": provenance.get("git_commit"), **calibration,
            "temperature": record.metrics.get("ece_temperature_scaled", {}).get("temperature"),
            "unconverged_fits": _unconverged_fits(record),
            "tol_limited_choice": _tol_limited_choice(record),
        })
    return pd.DataFrame(rows)


def _unconverged_fits(record: ResultRecord) -> int:
    """Solver fits the record says stopped before converging (linear: C values; k-shot: a count)."""
    resolved = record.protocol.get("resolved") or {}
    return len(resolved.get("unconverged_C") or []) + int(resolved.get("unconverged_fits") or 0)


def _tol_limited_choice(record: ResultRecord) -> bool:
    """The linear probe's chosen C is one whose fit met ``tol`` where it started (the previous C's
    solution, unchanged: ``resolved.tol_limited_C``), so its score reflects the path more than C."""
    resolved = record.protocol.get("resolved") or {}
    chosen, limited = resolved.get("C"), resolved.get("tol_limited_C") or []
    if not isinstance(chosen, (int, float)) or isinstance(chosen, bool):
        return False
    return any(isinstance(c, (int, float)) and math.isclose(chosen, c, rel_tol=1e-9) for c in limited)


def build_leaderboard(results_dir: Path, seed: int = 0) -> Leaderboard:
    """Read every record under ``results_dir`` and build the tables (no side effects)."""
    records, errors = load_records(results_dir)
    notes = [f"skipped unreadable record {path}: {reason}" for path, reason in errors]
    long = _long_rows(records)
    if long.empty:
        return Leaderboard(long, [], notes + ["no records found"], errors)
    long["value"] = pd.to_numeric(long["value"])
    if (long["unconverged_fits"] > 0).any():
        notes.append("§: the record lists logistic-regression fits that stopped before converging "
                     "(protocol.resolved.unconverged_C; k-shot linear: unconverged_fits)")
    if long["tol_limited_choice"].any():
        notes.append("‡: the chosen C's fit met tol where it started, i.e. it is the previous C's solution "
                     "(protocol.resolved.tol_limited_C): the choice among such C values reflects the warm-start path "
                     "more than C; -o tol=1e-8 pins every C's minimiser down (docs/evaluators.md, linear probe)")
    # a column is (dataset, protocol); several protocols for one dataset become several columns
    long["column"] = long["dataset"]
    for (evaluator, variant, dataset), group in long.groupby(["evaluator", "variant", "dataset"]):
        hashes = sorted(group["protocol_hash"].unique())
        if len(hashes) > 1:
            mask = (long["evaluator"] == evaluator) & (long["variant"] == variant) & (long["dataset"] == dataset)
            long.loc[mask, "column"] = long.loc[mask, "dataset"] + " @" + long.loc[mask, "protocol_hash"].str[:8]
            notes.append(f"{evaluator}/{variant} on {dataset}: {len(hashes)} different protocols "
                         f"({', '.join(h[:8] for h in hashes)}); shown as separate columns, never merged")
    long["plain_rank"] = long.groupby(["evaluator", "variant", "column"])["value"].rank(ascending=False, method="min")
    board = Leaderboard(long, [], notes, errors, records=records)
    loaded = {r.identity: comparison.load_with_predictions(r, results_dir) for r in records}
    _rank_columns(board, loaded, seed)
    order = {name: i for i, name in enumerate(EVALUATOR_ORDER)}
    keys = sorted(long.groupby(["evaluator", "variant"]).groups, key=lambda k: (order.get(k[0], 99), k[0], k[1]))
    for evaluator, variant in keys:
        part = board.long[(board.long["evaluator"] == evaluator) & (board.long["variant"] == variant)]
        title = _title(evaluator, variant)
        tables = [(title, _display_table(part)), *_paired_tables(board, evaluator, variant, title),
                  *_friedman_tables(board, part, evaluator, variant, title), *_detail_tables(records, evaluator, variant),
                  *_calibration_tables(records, evaluator, variant, title),
                  *_subgroup_tables(board, records, loaded, evaluator, variant, title, seed)]
        board.tables.extend(tables)
        board.table_keys.extend([(evaluator, variant)] * len(tables))
    return board


def _rank_columns(board: Leaderboard, loaded: dict[Any, comparison.LoadedRecord], seed: int) -> None:
    """CI-aware ranks per column (paired comparisons with the best); plain ranks where nothing pairs."""
    long = board.long
    long["rank"] = long["plain_rank"]
    long["paired"] = False
    for column in ("diff_to_best", "diff_ci_low", "diff_ci_high", "p_vs_best", "p_vs_best_holm", "p_best"):
        long[column] = np.nan
    long["pairing_test"] = ""
    by_identity = {(r.identity.evaluator, r.identity.variant, r.identity.encoder, r.identity.dataset): r.identity
                   for r in board.records}
    for (evaluator, variant, column), group in long.groupby(["evaluator", "variant", "column"]):
        if len(group) < 2:
            continue
        members = [loaded[by_identity[(evaluator, variant, row["encoder"], row["dataset"])]] for _, row in group.iterrows()]
        if all(item.predictions is None for item in members):
            continue
        analysis = comparison.analyse_column(members, seed=seed)
        board.columns[(evaluator, variant, column)] = analysis
        for index, entry in zip(group.index, analysis.entries):
            paired = entry.vs_best is not None or entry.encoder == analysis.best and analysis.paired
            long.loc[index, "rank"] = entry.rank if paired else entry.plain_rank
            long.loc[index, "paired"] = bool(paired)
            long.loc[index, "p_best"] = entry.p_best
            if entry.vs_best is not None:
                long.loc[index, ["diff_to_best", "diff_ci_low", "diff_ci_high", "p_vs_best", "p_vs_best_holm"]] = [
                    -entry.vs_best.difference, -entry.vs_best.ci[1], -entry.vs_best.ci[0], entry.vs_best.p_value,
                    entry.p_holm]
                long.loc[index, "pairing_test"] = entry.vs_best.method


def _title(evaluator: str, variant: str) -> str:
    return evaluator if variant == "default" else f"{evaluator} ({variant})"


def _display_table(part: pd.DataFrame) -> pd.DataFrame:
    columns = sorted(part["column"].unique())
    rows = []
    for encoder, group in part.groupby("encoder"):
        row = {"encoder": encoder, "kind": group["encoder_kind"].iloc[0]}
        for column in columns:
            hit = group[group["column"] == column]
            if hit.empty:
                row[column] = ""
                continue
            item = hit.iloc[0]
            ci = [item["ci_low"], item["ci_high"]]
            ci = None if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in ci) else ci
            cell = _fmt(item["value"], ci, item.get("sd"))
            unpaired = "" if item["paired"] or (part["column"] == column).sum() < 2 else "†"
            row[column] = f"{cell} (#{int(item['rank'])}{unpaired})" if not math.isnan(item["rank"]) else cell
            row[column] += " §" if item.get("unconverged_fits", 0) else ""
            row[column] += " ‡" if item.get("tol_limited_choice", False) else ""
        row["mean rank"] = round(float(group["rank"].mean()), 2)
        ips = pd.to_numeric(group["images_per_second"], errors="coerce")
        row["images/s"] = f"{ips.mean():.1f}" if ips.notna().any() else ""
        row["seconds"] = f"{pd.to_numeric(group['wall_seconds'], errors='coerce').sum():.1f}"
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["mean rank", "encoder"]).reset_index(drop=True)
    metric_of = part.groupby("column")["metric"].first().to_dict()
    return table.rename(columns={c: f"{c} ({metric_of[c]})" for c in columns})


def _paired_tables(board: Leaderboard, evaluator: str, variant: str, title: str) -> list[tuple[str, pd.DataFrame]]:
    rows = []
    for (e, v, column), analysis in sorted(board.columns.items()):
        if (e, v) != (evaluator, variant) or not analysis.paired:
            continue
        for entry in sorted(analysis.entries, key=lambda x: (x.rank, -x.value if _finite(x.value) else 0)):
            if entry.encoder == analysis.best:
                rows.append({"column": column, "encoder": entry.encoder, "rank": int(entry.rank),
                             "difference to best [95 % CI]": "best", "p": "", "p (Holm)": "",
                             "P(best)": _share(entry.p_best), "test": ""})
                continue
            result = entry.vs_best
            rows.append({"column": column, "encoder": entry.encoder, "rank": int(entry.rank) if result else "",
                         "difference to best [95 % CI]": (_fmt(-result.difference, (-result.ci[1], -result.ci[0]), signed=True)
                                                          if result else entry.note),
                         "p": _p(result.p_value) if result else "", "p (Holm)": _p(entry.p_holm) if result else "",
                         "P(best)": _share(entry.p_best), "test": result.method if result else ""})
    return [(f"{title}: paired differences to the best", pd.DataFrame(rows))] if rows else []


def _friedman_tables(board: Leaderboard, part: pd.DataFrame, evaluator: str, variant: str,
                     title: str) -> list[tuple[str, pd.DataFrame]]:
    """Mean ranks + Friedman + Nemenyi over the columns (datasets) where every kept encoder has a value."""
    wide = part.pivot_table(index="column", columns="encoder", values="value", aggfunc="first")
    if part["dataset"].nunique() < 3:
        return []
    wide = wide.dropna(axis=1, how="any")
    if wide.shape[0] < 3 or wide.shape[1] < 3:
        board.notes.append(f"{title}: no Friedman test: fewer than 3 encoders have a result on all {wide.shape[0]} "
                           f"datasets")
        return []
    result = stats.friedman_test(wide.to_numpy(), list(wide.columns))
    board.friedman[(evaluator, variant)] = result
    best_rank = min(result.mean_ranks)
    rows = [{"encoder": encoder, "mean rank": round(rank, 3),
             "differs from the best (Nemenyi)": "yes" if rank - best_rank > result.critical_difference else "no"}
            for encoder, rank in sorted(zip(result.encoders, result.mean_ranks), key=lambda x: x[1])]
    board.notes.append(f"{title} across {result.n_datasets} datasets: Friedman chi2 = {result.statistic:.3f}, "
                       f"p = {_p(result.p_value)}; Iman-Davenport F = {result.iman_davenport_f:.3f}, "
                       f"p = {_p(result.iman_davenport_p)}; Nemenyi CD = {result.critical_difference:.3f} "
                       f"(k = {len(result.encoders)}, N = {result.n_datasets}, alpha = {result.alpha})")
    return [(f"{title}: across datasets (mean rank; Friedman p = {_p(result.p_value)}, "
             f"Nemenyi CD = {result.critical_difference:.3f})", pd.DataFrame(rows))]


def _detail_tables(records: list[ResultRecord], evaluator: str, variant: str) -> list[tuple[str, pd.DataFrame]]:
    """Per-metric tables for records that ask for them (probes: one column per transform)."""
    chosen = [r for r in records if r.identity.evaluator == evaluator and r.identity.variant == variant
              and r.extra.get("detail_metrics")]
    tables = []
    for dataset in sorted({r.identity.dataset for r in chosen}):
        rows = []
        for record in sorted((r for r in chosen if r.identity.dataset == dataset), key=lambda r: r.identity.encoder):
            row = {"encoder": record.identity.encoder}
            for name in record.extra["detail_metrics"]:
                entry = record.metrics.get(name, {})
                row[name] = _fmt(entry.get("value"), entry.get("ci"))
            rows.append(row)
        if rows:
            tables.append((f"{_title(evaluator, variant)} on {dataset}: all metrics", pd.DataFrame(rows)))
    return tables


def _calibration_tables(records: list[ResultRecord], evaluator: str, variant: str,
                        title: str) -> list[tuple[str, pd.DataFrame]]:
    rows = []
    for record in sorted(records, key=lambda r: (r.identity.dataset, r.identity.encoder)):
        i = record.identity
        if (i.evaluator, i.variant) != (evaluator, variant) or "ece" not in record.metrics:
            continue
        before, after = record.metrics["ece"], record.metrics.get("ece_temperature_scaled", {})
        rows.append({"dataset": i.dataset, "encoder": i.encoder, "ECE": _fmt(before.get("value"), before.get("ci")),
                     "ECE after temperature scaling": _fmt(after.get("value"), after.get("ci")),
                     "temperature": (f"{after['temperature']:.3f}" + (" (at search bound)" if after.get("temperature_at_bound") else ""))
                     if _finite(after.get("temperature")) else ""})
    return [(f"{title}: calibration (ECE, {ECE_BINS} bins; lower is better)", pd.DataFrame(rows))] if rows else []


def _subgroup_tables(board: Leaderboard, records: list[ResultRecord], loaded: dict, evaluator: str, variant: str,
                     title: str, seed: int) -> list[tuple[str, pd.DataFrame]]:
    """One table per (dataset, subgroup column): value [CI] (n) per subgroup, worst subgroup and gap."""
    chosen = [r for r in records if (r.identity.evaluator, r.identity.variant) == (evaluator, variant) and r.subgroups]
    tables = []
    for dataset in sorted({r.identity.dataset for r in chosen}):
        in_dataset = sorted((r for r in chosen if r.identity.dataset == dataset), key=lambda r: r.identity.encoder)
        for column in sorted({c for r in in_dataset for c in r.subgroups}):
            keys = sorted({k for r in in_dataset for k in r.subgroups.get(column, {})}, key=_subgroup_order)
            if not keys:
                continue
            rows = []
            for record in in_dataset:
                metric = record.primary_metric
                groups = record.subgroups.get(column, {})
                row: dict[str, Any] = {"encoder": record.identity.encoder}
                for key in keys:
                    entry = groups.get(key)
                    if not entry:
                        row[key] = ""
                        continue
                    small = " small" if entry.get("n", 0) < comparison.SUBGROUP_MIN_N else ""
                    row[key] = f"{_fmt(entry.get(metric, {}).get('value'), entry.get(metric, {}).get('ci'))} (n={entry.get('n')}{small})"
                predictions = loaded.get(record.identity)
                gap = comparison.subgroup_gap(record, column, predictions.predictions if predictions else None, seed=seed)
                row["worst"] = gap.worst if gap else ""
                row["gap best-worst [95 % CI]"] = _fmt(gap.gap, gap.ci) if gap else "n/a (< 2 ranked subgroups)"
                if gap:
                    board.gaps.append({"evaluator": evaluator, "variant": variant, "dataset": dataset,
                                       "column": column, "encoder": record.identity.encoder, "metric": metric,
                                       "worst": gap.worst, "best": gap.best, "gap": gap.gap,
                                       "ci_low": gap.ci[0] if gap.ci else math.nan,
                                       "ci_high": gap.ci[1] if gap.ci else math.nan})
                rows.append(row)
            metric = in_dataset[0].primary_metric
            tables.append((f"{title} on {dataset}: subgroups by {column} ({metric})", pd.DataFrame(rows)))
    return tables


def _subgroup_order(key: str) -> tuple[int, float, str]:
    try:
        return (0, float(key), key)
    except ValueError:
        return (1, 0.0, key)


def render_markdown(board: Leaderboard) -> str:
    """GitHub-flavoured markdown of every table, then the notes."""
    parts = ["# medtransfer leaderboard", "", LEGEND, ""]
    for title, table in board.tables:
        parts += [f"## {title}", "", tabulate(table, headers="keys", tablefmt="github", showindex=False), ""]
    references = published_references(board)
    if not references.empty:  # published numbers: listed apart, never ranked or mixed with our runs
        parts += ["## Published references", "", tabulate(references, headers="keys", tablefmt="github",
                                                           showindex=False), ""]
    if board.notes:
        parts += ["## Notes", ""] + [f"- {note}" for note in board.notes] + [""]
    return "\n".join(parts)


def published_references(board: Leaderboard) -> pd.DataFrame:
    return pd.DataFrame(reference_rows(sorted(board.long["dataset"].unique())) if not board.long.empty else [])


def write_leaderboard(results_dir: Path, out: Path | None = None,
                      board: Leaderboard | None = None) -> tuple[Path, Path, Leaderboard]:
    """Write ``leaderboard.md`` and ``leaderboard.csv`` (atomically) and return their paths."""
    board = board or build_leaderboard(results_dir)
    markdown_path = Path(out) if out else Path(results_dir) / "leaderboard.md"
    csv_path = markdown_path.with_suffix(".csv")
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(markdown_path, render_markdown(board))
    atomic_write_text(csv_path, board.long.to_csv(index=False))
    return markdown_path, csv_path, board
