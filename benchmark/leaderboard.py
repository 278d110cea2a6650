"""Leaderboards: a pure function of a results folder to markdown (GitHub tables) and CSV.

One table per (evaluator, variant): encoders x datasets, each cell the primary metric with its
95 % CI and the rank within the column, the metric named in the header, a mean rank and cost
columns. Records of one column whose protocol hashes differ are never merged: they go into
separate columns tagged with the hash, and a note says so. Corrupt records are reported and
skipped. Records that ask for it (``extra["detail_metrics"]``) also get a per-metric table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from benchmark.atomic import atomic_write_text
from benchmark.references import reference_rows
from benchmark.records import ResultRecord, load_records

EVALUATOR_ORDER = ["linear", "knn", "fewshot", "kshot-linear", "finetune", "invariance", "multiview-invariance",
                   "saliency", "dip"]


@dataclass
class Leaderboard:
    long: pd.DataFrame  # one row per record (the CSV)
    tables: list[tuple[str, pd.DataFrame]]  # (title, display table)
    notes: list[str] = field(default_factory=list)
    errors: list[tuple[Path, str]] = field(default_factory=list)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _fmt(value: float | None, ci: list | None, sd: float | None = None) -> str:
    """``0.500 [0.400, 0.600]`` with a CI; ``0.500 ± 0.020`` for a mean over seeds without one."""
    if not _finite(value):
        return "n/a"
    text = f"{value:.3f}"
    if ci and ci[0] is not None and ci[1] is not None:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    elif _finite(sd):
        text += f" ± {sd:.3f}"
    return text


def _long_rows(records: list[ResultRecord]) -> pd.DataFrame:
    rows = []
    for record in records:
        primary = record.metrics[record.primary_metric]
        ci = primary.get("ci") or [None, None]
        provenance = record.provenance
        rows.append({
            "evaluator": record.identity.evaluator, "variant": record.identity.variant,
            "dataset": record.identity.dataset, "encoder": record.identity.encoder,
            "encoder_kind": provenance.get("encoder_kind", ""), "metric": record.primary_metric,
            "value": primary.get("value"), "ci_low": ci[0], "ci_high": ci[1], "sd": primary.get("sd"),
            "protocol_hash": record.protocol_hash,
            "images_per_second": provenance.get("cost_images_per_second"),
            "wall_seconds": provenance.get("wall_seconds"), "device": provenance.get("device"),
            "git_commit": provenance.get("git_commit"),
        })
    return pd.DataFrame(rows)


def build_leaderboard(results_dir: Path) -> Leaderboard:
    """Read every record under ``results_dir`` and build the tables (no side effects)."""
    records, errors = load_records(results_dir)
    notes = [f"skipped unreadable record {path}: {reason}" for path, reason in errors]
    long = _long_rows(records)
    if long.empty:
        return Leaderboard(long, [], notes + ["no records found"], errors)
    long["value"] = pd.to_numeric(long["value"])
    # a column is (dataset, protocol); several protocols for one dataset become several columns
    long["column"] = long["dataset"]
    for (evaluator, variant, dataset), group in long.groupby(["evaluator", "variant", "dataset"]):
        hashes = sorted(group["protocol_hash"].unique())
        if len(hashes) > 1:
            mask = (long["evaluator"] == evaluator) & (long["variant"] == variant) & (long["dataset"] == dataset)
            long.loc[mask, "column"] = long.loc[mask, "dataset"] + " @" + long.loc[mask, "protocol_hash"].str[:8]
            notes.append(f"{evaluator}/{variant} on {dataset}: {len(hashes)} different protocols "
                         f"({', '.join(h[:8] for h in hashes)}); shown as separate columns, never merged")
    long["rank"] = long.groupby(["evaluator", "variant", "column"])["value"].rank(ascending=False, method="min")
    tables = []
    order = {name: i for i, name in enumerate(EVALUATOR_ORDER)}
    keys = sorted(long.groupby(["evaluator", "variant"]).groups, key=lambda k: (order.get(k[0], 99), k[0], k[1]))
    for evaluator, variant in keys:
        part = long[(long["evaluator"] == evaluator) & (long["variant"] == variant)]
        tables.append((_title(evaluator, variant), _display_table(part)))
        tables.extend(_detail_tables(records, evaluator, variant))
    return Leaderboard(long.drop(columns=["column"]).assign(column=long["column"]), tables, notes, errors)


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
            row[column] = f"{cell} (#{int(item['rank'])})" if not math.isnan(item["rank"]) else cell
        row["mean rank"] = round(float(group["rank"].mean()), 2)
        ips = pd.to_numeric(group["images_per_second"], errors="coerce")
        row["images/s"] = f"{ips.mean():.1f}" if ips.notna().any() else ""
        row["seconds"] = f"{pd.to_numeric(group['wall_seconds'], errors='coerce').sum():.1f}"
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["mean rank", "encoder"]).reset_index(drop=True)
    metric_of = part.groupby("column")["metric"].first().to_dict()
    return table.rename(columns={c: f"{c} ({metric_of[c]})" for c in columns})


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


def render_markdown(board: Leaderboard) -> str:
    """GitHub-flavoured markdown of every table, then the notes."""
    parts = ["# medtransfer leaderboard", "",
             "Cells: primary metric on the test split, 95 % bootstrap CI in brackets (few-shot: ±1.96 sd/sqrt(episodes)); "
             "a mean over seeds without a CI shows ± its sd (k-shot linear, MedMNIST seeds); "
             "rank within the column after '#'. Columns with different protocol hashes are never merged.", ""]
    for title, table in board.tables:
        parts += [f"## {title}", "", tabulate(table, headers="keys", tablefmt="github", showindex=False), ""]
    references = reference_rows(sorted(board.long["dataset"].unique())) if not board.long.empty else []
    if references:  # published numbers: listed apart, never ranked or mixed with our runs
        parts += ["## Published references", "", tabulate(pd.DataFrame(references), headers="keys", tablefmt="github",
                                                           showindex=False), ""]
    if board.notes:
        parts += ["## Notes", ""] + [f"- {note}" for note in board.notes] + [""]
    return "\n".join(parts)


def write_leaderboard(results_dir: Path, out: Path | None = None) -> tuple[Path, Path, Leaderboard]:
    """Write ``leaderboard.md`` and ``leaderboard.csv`` (atomically) and return their paths."""
    board = build_leaderboard(results_dir)
    markdown_path = Path(out) if out else Path(results_dir) / "leaderboard.md"
    csv_path = markdown_path.with_suffix(".csv")
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(markdown_path, render_markdown(board))
    _write_text_atomic(csv_path, board.long.to_csv(index=False))
    return markdown_path, csv_path, board


def _write_text_atomic(path: Path, text: str) -> None:
    atomic_write_text(path, text)
