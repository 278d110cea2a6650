"""``cli.py reproduce``: our per-seed results next to the published numbers (no printing here)."""
from __future__ import annotations

from benchmark.records import ResultRecord
from benchmark.references import compare, medmnist_v2_model, references_for

METRIC_LABELS = {"auroc": "AUC", "accuracy": "ACC"}


def medmnist_v2_comparison(record: ResultRecord, arch: str, size: int, tolerance: float = 0.03) -> list[dict]:
    """One row per metric: ours (mean, sd, per seed), the published value, and the verdicts of :func:`compare`.

    A metric without a registered reference gets ``published = None``.
    """
    model = medmnist_v2_model(arch, size)
    published = {r.metric: r for r in references_for(record.identity.dataset, model, "medmnist-v2")}
    rows = []
    for name, label in METRIC_LABELS.items():
        entry = record.metrics[name]
        values = entry.get("per_seed") or [entry["value"]]
        reference = published.get(name)
        row = {"metric": label, "model": model, "ours_mean": float(entry["value"]), "ours_sd": float(entry.get("sd", 0.0)),
               "per_seed": [float(v) for v in values], "published": None}
        if reference is not None:
            row.update(compare(values, reference.value, tolerance))
            row["source"] = f"{reference.paper}, {reference.table}"
        rows.append(row)
    return rows


def format_comparison(rows: list[dict]) -> str:
    """A plain-text table: metric | ours mean +- sd | seeds | published | difference | verdicts."""
    lines = [f"{'metric':<6} {'model':<16} {'ours (mean ± sd)':<18} {'per seed':<26} {'published':<10} "
             f"{'diff':<8} {'in mean±2sd':<12} {'|diff|<=tol'}"]
    for row in rows:
        seeds = ", ".join(f"{v:.3f}" for v in row["per_seed"])
        ours = f"{row['ours_mean']:.3f} ± {row['ours_sd']:.3f}"
        if row["published"] is None:
            lines.append(f"{row['metric']:<6} {row['model']:<16} {ours:<18} {seeds:<26} {'(none)':<10}")
            continue
        lines.append(f"{row['metric']:<6} {row['model']:<16} {ours:<18} {seeds:<26} {row['published']:<10.3f} "
                     f"{row['difference']:<+8.3f} {'yes' if row['within_spread'] else 'NO':<12} "
                     f"{'yes' if row['within_tolerance'] else 'NO'} (tol {row['tolerance']:.2f})")
    return "\n".join(lines)
