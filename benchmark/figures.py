"""Figures of a leaderboard (matplotlib, Agg): each written as PNG (150 dpi) and SVG.

* forest plot per leaderboard column: point and 95 % CI per encoder, sorted; filled markers are
  the encoders sharing CI-aware rank 1;
* critical-difference diagram per evaluator over >= 3 datasets (mean ranks, Nemenyi CD, bars
  joining encoders whose mean ranks differ by less than the CD);
* subgroup gaps: best-worst subgroup gap with its CI per encoder, one panel per subgroup column;
* invariance heatmap: encoder x transformation (the invariance probes' per-transform metrics);
* cost vs quality: images/s (log scale) against the primary metric, per evaluator.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmark import stats  # noqa: E402
from benchmark.comparison import metric_value  # noqa: E402
from benchmark.leaderboard import Leaderboard  # noqa: E402

log = logging.getLogger(__name__)

INVARIANCE_PROBES = ("invariance", "multiview-invariance")


@dataclass
class FigureFile:
    key: tuple[str, str]  # (evaluator, variant) the figure belongs to
    title: str
    png: Path
    svg: Path


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower()[:120] or "figure"


def _save(fig: plt.Figure, folder: Path, name: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    png, svg = folder / f"{name}.png", folder / f"{name}.svg"
    fig.tight_layout()
    fig.savefig(png, dpi=150)
    fig.savefig(svg, metadata={"Date": None})  # no timestamp: identical input, identical file
    plt.close(fig)
    return png, svg


def forest_plot(part: pd.DataFrame, title: str, metric: str) -> plt.Figure:
    """part: the long rows of one column (value, ci_low, ci_high, encoder, rank)."""
    part = part.sort_values("value", ascending=True)
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.38 * len(part)))
    y = np.arange(len(part))
    low = (part["value"] - pd.to_numeric(part["ci_low"], errors="coerce")).to_numpy(dtype=float)
    high = (pd.to_numeric(part["ci_high"], errors="coerce") - part["value"]).to_numpy(dtype=float)
    errors = np.nan_to_num(np.vstack([low, high]))
    ax.errorbar(part["value"], y, xerr=errors, fmt="none", ecolor="0.35", capsize=3, lw=1.2)
    top = (part["rank"] == 1).to_numpy()
    paired = bool(part["paired"].any()) if "paired" in part else False
    ax.scatter(part["value"][top], y[top], color="tab:blue", zorder=3,
               label="rank 1 (CI-aware)" if paired else "rank 1 (not paired: plain rank)")
    ax.scatter(part["value"][~top], y[~top], facecolors="white", edgecolors="tab:blue", zorder=3, label="other")
    ax.set_yticks(y, part["encoder"])
    ax.set_xlabel(f"{metric} (95 % CI)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    if top.any() and (~top).any():
        ax.legend(fontsize=8, loc="lower right")
    return fig


def cd_diagram(result: stats.FriedmanResult, title: str) -> plt.Figure:
    """Demsar-style critical-difference diagram (rank 1 on the left)."""
    k = len(result.encoders)
    order = np.argsort(result.mean_ranks, kind="stable")
    ranks = np.asarray(result.mean_ranks)[order]
    names = [result.encoders[i] for i in order]
    fig, ax = plt.subplots(figsize=(7.0, 1.6 + 0.28 * k))
    ax.set_xlim(0.5, k + 0.5)
    ax.set_ylim(-(((k + 1) // 2) * 0.5 + 0.6), 1.6)
    ax.axis("off")
    ax.hlines(0, 1, k, color="black", lw=1)
    for r in range(1, k + 1):
        ax.vlines(r, 0, 0.12, color="black", lw=1)
        ax.text(r, 0.22, str(r), ha="center", va="bottom", fontsize=8)
    cd = result.critical_difference
    ax.hlines(1.15, 1, 1 + cd, color="tab:red", lw=2)
    ax.text(1 + cd / 2, 1.25, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=8, color="tab:red")
    half = (k + 1) // 2
    for position, (name, rank) in enumerate(zip(names, ranks)):
        left = position < half
        row = -(position + 1) if left else -(k - position)
        x_text = 0.55 if left else k + 0.45
        ax.plot([rank, rank, x_text], [0, row * 0.5, row * 0.5], color="0.3", lw=0.8)
        ax.text(x_text, row * 0.5, f"{name} ({rank:.2f})", ha="left" if left else "right", va="center", fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    for level, (first, last) in enumerate(stats.cliques(ranks, cd)):
        ax.hlines(-0.15 - 0.15 * level, ranks[first] - 0.03, ranks[last] + 0.03, color="black", lw=3)
    ax.set_title(title + f"\nFriedman p = {result.p_value:.3g} over {result.n_datasets} datasets", fontsize=10)
    return fig


def gap_plot(gaps: pd.DataFrame, title: str) -> plt.Figure:
    """gaps: rows (column, encoder, gap, ci_low, ci_high, worst, best) of one (evaluator, dataset)."""
    columns = sorted(gaps["column"].unique())
    height = max(len(g) for _, g in gaps.groupby("column"))
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 1.1 + 0.4 * height), squeeze=False)
    for ax, column in zip(axes[0], columns):
        part = gaps[gaps["column"] == column].sort_values("gap")
        y = np.arange(len(part))
        err = np.nan_to_num(np.vstack([part["gap"] - part["ci_low"], part["ci_high"] - part["gap"]]).astype(float))
        ax.errorbar(part["gap"], y, xerr=err, fmt="o", color="tab:purple", capsize=3)
        ax.set_yticks(y, [f"{e}\n(worst: {w})" for e, w in zip(part["encoder"], part["worst"])], fontsize=7)
        ax.axvline(0, color="0.5", lw=0.8)
        ax.set_xlabel(f"best - worst {column} ({part['metric'].iloc[0]})", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return fig


def invariance_heatmap(matrix: pd.DataFrame, title: str) -> plt.Figure:
    """matrix: encoders (rows) x transformations (columns) of the invariance metric."""
    fig, ax = plt.subplots(figsize=(1.2 + 0.75 * matrix.shape[1], 1.0 + 0.45 * matrix.shape[0]))
    values = matrix.to_numpy(dtype=float)
    image = ax.imshow(values, cmap="viridis", aspect="auto", vmin=min(0.0, np.nanmin(values)), vmax=1.0)
    ax.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(matrix.shape[0]), matrix.index, fontsize=8)
    for (i, j), value in np.ndenumerate(values):
        if math.isfinite(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=10)
    return fig


def cost_quality(part: pd.DataFrame, title: str) -> plt.Figure:
    """part: long rows of one (evaluator, variant) with images_per_second and value."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for column, group in part.groupby("column"):
        ips = pd.to_numeric(group["images_per_second"], errors="coerce")
        value = group["value"]
        err = np.nan_to_num(np.vstack([value - pd.to_numeric(group["ci_low"], errors="coerce"),
                                       pd.to_numeric(group["ci_high"], errors="coerce") - value]).astype(float))
        ax.errorbar(ips, value, yerr=err, fmt="o", capsize=3, label=f"{column} ({group['metric'].iloc[0]})")
        for x, y, name in zip(ips, value, group["encoder"]):
            if math.isfinite(x) and math.isfinite(y):
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("images / s (feature extraction or training; log scale)")
    ax.set_ylabel("primary metric (95 % CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    return fig


def write_figures(board: Leaderboard, folder: Path) -> list[FigureFile]:
    """Every figure the leaderboard supports, into ``folder``; returns them in leaderboard order."""
    from benchmark.leaderboard import _title  # one naming of (evaluator, variant)
    figures: list[FigureFile] = []

    def add(key: tuple[str, str], title: str, fig: plt.Figure, name: str) -> None:
        png, svg = _save(fig, folder, slug(name))
        figures.append(FigureFile(key, title, png, svg))

    long = board.long
    if long.empty:
        return figures
    for (evaluator, variant) in dict.fromkeys(board.table_keys):
        part = long[(long["evaluator"] == evaluator) & (long["variant"] == variant)]
        title = _title(evaluator, variant)
        for column, rows in part.groupby("column"):
            if rows["value"].notna().any():
                metric = rows["metric"].iloc[0]
                add((evaluator, variant), f"{title} on {column}: {metric} with 95 % CI",
                    forest_plot(rows, f"{title} on {column}", metric), f"forest-{evaluator}-{variant}-{column}")
        if (evaluator, variant) in board.friedman:
            add((evaluator, variant), f"{title}: critical-difference diagram",
                cd_diagram(board.friedman[(evaluator, variant)], f"{title}: mean ranks across datasets"),
                f"cd-{evaluator}-{variant}")
        gaps = pd.DataFrame([g for g in board.gaps if (g["evaluator"], g["variant"]) == (evaluator, variant)])
        for dataset, rows in (gaps.groupby("dataset") if not gaps.empty else []):
            add((evaluator, variant), f"{title} on {dataset}: best-worst subgroup gaps",
                gap_plot(rows, f"{title} on {dataset}: subgroup gaps (95 % CI)"), f"gaps-{evaluator}-{variant}-{dataset}")
        if evaluator in INVARIANCE_PROBES:
            for dataset, matrix in _invariance_matrices(board, evaluator, variant).items():
                add((evaluator, variant), f"{title} on {dataset}: invariance per transformation",
                    invariance_heatmap(matrix, f"{title} on {dataset}"), f"heatmap-{evaluator}-{variant}-{dataset}")
        if pd.to_numeric(part["images_per_second"], errors="coerce").gt(0).any():
            add((evaluator, variant), f"{title}: cost vs quality", cost_quality(part, f"{title}: cost vs quality"),
                f"cost-{evaluator}-{variant}")
    return figures


def _invariance_matrices(board: Leaderboard, evaluator: str, variant: str) -> dict[str, pd.DataFrame]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for record in board.records:
        i = record.identity
        if (i.evaluator, i.variant) != (evaluator, variant) or not record.extra.get("detail_metrics"):
            continue
        out.setdefault(i.dataset, {})[i.encoder] = {
            name: metric_value(record.metrics.get(name, {})) for name in record.extra["detail_metrics"]}
    return {dataset: pd.DataFrame(rows).T.sort_index() for dataset, rows in out.items()}
