"""``cli.py reproduce``: runs of a published protocol, ours next to the published numbers, fidelity reports.

One run is a normal runner cell (``medmnist-v2`` evaluator, record under ``records/medmnist-v2/``);
:func:`medmnist_v2_comparison` puts its per-seed metrics next to the paper's same-arch row and, for
context, the best of the table's other methods. ``--all`` (:func:`run_medmnist_v2_all`) finds every
MedMNIST file under a folder (:func:`discover_medmnist`), plans the runs the paper's table has a row
for (:func:`plan_medmnist_v2`), runs them and writes a fidelity report (:func:`write_fidelity_report`,
markdown + CSV). No printing here: progress goes to a ``report(line)`` callback.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import pandas as pd
from tabulate import tabulate

from benchmark.atomic import atomic_write_text
from benchmark.records import ResultRecord
from benchmark.references import (MEDMNIST_V2, MEDMNIST_V2_TABLE, VERDICTS, best_other, compare, medmnist_v2_dataset,
                                  medmnist_v2_model, references_for)
from benchmark.runner import Cell, CellOutcome, Runner, RunSettings
from datasets.base import DatasetError
from datasets.medmnist_info import MEDMNIST_2D
from datasets.registry import DATASETS

log = logging.getLogger(__name__)

METRIC_LABELS = {"auroc": "AUC", "accuracy": "ACC"}
PROTOCOL = "medmnist-v2"
PAPER_SIZES = (28, 224)  # the model input sizes of the paper's table
ARCHS = ("resnet18", "resnet50")


# -- one record against the table -----------------------------------------------------------------
def reference_dataset(record: ResultRecord) -> str | None:
    """The MedMNIST v2 table's dataset for ``record``, or None when the record's task is not the paper's.

    ``medmnist:<flag>`` and ``medmnist:<flag>-<size>`` (another file resolution) compare with the
    paper's row; a dataset option that changes the task or the data (``task=effusion``, ``low_data``)
    does not.
    """
    info = record.protocol.get("dataset", {}).get("info", {})
    flag, size = info.get("flag"), info.get("size", 28)
    if not flag:
        return None
    plain = medmnist_v2_dataset(flag)
    return plain if record.identity.dataset in (plain, f"{plain}-{size}") else None


def medmnist_v2_comparison(record: ResultRecord, arch: str, size: int, tolerance: float = 0.03) -> list[dict]:
    """One row per metric: ours (mean, sd, per seed), the paper's same-arch value, the verdicts of
    :func:`benchmark.references.compare`, the best other method of the table and the source facts.

    A metric without a registered reference gets ``published = None`` (and ``verdict = "no reference"``).
    """
    model = medmnist_v2_model(arch, size)
    dataset = reference_dataset(record)
    info = record.protocol.get("dataset", {}).get("info", {})
    source_size = int(info.get("size", 28))
    note = "" if source_size == 28 else (f"source images {source_size} px; the paper trained on 28-px images"
                                         + (" resized to 224" if size == 224 else ""))
    rows = []
    for name, label in METRIC_LABELS.items():
        entry = record.metrics[name]
        values = entry.get("per_seed") or [entry["value"]]
        row = {"metric": label, "model": model, "ours_mean": float(entry["value"]), "ours_sd": float(entry.get("sd", 0.0)),
               "per_seed": [float(v) for v in values], "published": None, "verdict": "no reference",
               "single_source": None, "best_other_model": None, "best_other_value": None, "note": note}
        found = references_for(dataset, model, PROTOCOL, name) if dataset else []
        if found:
            reference = found[0]
            row.update(compare(values, reference.value, tolerance))
            row.update(source=f"{reference.paper}, {reference.table}", single_source=reference.single_source)
            other = best_other(dataset, name, model)
            if other is not None:
                row.update(best_other_model=other.model, best_other_value=other.value)
        elif dataset is None:
            row["note"] = f"{record.identity.dataset} is not the paper's task/data: no published row"
        rows.append(row)
    return rows


def format_comparison(rows: list[dict]) -> str:
    """A plain-text table: metric | model | ours mean ± sd | seeds | published | diff | verdicts | best other."""
    table = []
    for row in rows:
        line = {"metric": row["metric"], "model": row["model"],
                "ours (mean ± sd)": f"{row['ours_mean']:.3f} ± {row['ours_sd']:.3f}",
                "per seed": ", ".join(f"{v:.3f}" for v in row["per_seed"])}
        if row["published"] is None:
            line.update({"published": "(none)"})
        else:
            line.update({"published": f"{row['published']:.3f}" + ("*" if row["single_source"] else ""),
                         "diff": f"{row['difference']:+.3f}", "in mean±2sd": "yes" if row["within_spread"] else "NO",
                         "|diff|<=tol": f"{'yes' if row['within_tolerance'] else 'NO'} (tol {row['tolerance']:.2f})",
                         "verdict": row["verdict"],
                         "best other (context)": (f"{row['best_other_value']:.3f} {row['best_other_model']}"
                                                  if row["best_other_model"] else "")})
        table.append(line)
    text = tabulate(pd.DataFrame(table).fillna(""), headers="keys", tablefmt="simple", showindex=False,
                    disable_numparse=True)
    notes = sorted({row["note"] for row in rows if row["note"]})
    if any(row["single_source"] for row in rows):
        notes.append("* published value seen in one source only (the project site's table)")
    return "\n".join([text, *notes])


def md5_note(record: ResultRecord) -> str | None:
    """A one-line note when the record's source file is not the published one (md5 mismatch), else None."""
    md5 = record.extra.get("md5") if isinstance(record.extra, dict) else None
    if not md5 or md5.get("status") != "mismatch":
        return None
    return (f"note: {Path(md5.get('file', '')).name} is not the published file (md5 {md5.get('actual')}, published "
            f"{md5.get('expected')}): re-saved or changed; results may not be comparable")


# -- finding files and planning runs --------------------------------------------------------------
@dataclass(frozen=True)
class MedMNISTFile:
    """One MedMNIST npz: ``flag`` at ``size`` px (28 for ``{flag}.npz``, else the MedMNIST+ ``{flag}_{size}.npz``)."""

    flag: str
    size: int
    path: Path


_FILE_NAME = re.compile(r"^(?P<flag>[a-z]+mnist)(?:_(?P<size>\d+))?\.npz$")


def discover_medmnist(root: Path) -> list[MedMNISTFile]:
    """Every known 2D MedMNIST file directly in ``root`` (both layouts), sorted by table order then size.

    ``{flag}.npz`` and ``{flag}_28.npz`` are both 28 px; when both exist the first is used. Unknown
    flags and other files are ignored (logged).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"reproduce --all: --root {root} is not a folder; pass the folder that holds the "
                           f"MedMNIST .npz files (e.g. breastmnist.npz, dermamnist_224.npz)")
    found: dict[tuple[str, int], MedMNISTFile] = {}
    for path in sorted(root.iterdir(), key=lambda p: (len(p.name), p.name)):  # breastmnist.npz before _28
        match = _FILE_NAME.match(path.name.lower())
        if not match or not path.is_file():
            continue
        flag, size = match["flag"], int(match["size"] or 28)
        if flag not in MEDMNIST_2D:
            log.info("reproduce --all: %s is not a MedMNIST v2 2D flag; ignored", path.name)
            continue
        found.setdefault((flag, size), MedMNISTFile(flag, size, path))
    order = list(MEDMNIST_2D)
    return sorted(found.values(), key=lambda f: (order.index(f.flag), f.size))


@dataclass(frozen=True)
class PlannedRun:
    flag: str
    arch: str
    size: int  # model input size (28 or 224)
    source: MedMNISTFile


def plan_medmnist_v2(files: list[MedMNISTFile], archs: tuple[str, ...] = ("resnet18",),
                     sizes: tuple[int, ...] = (28,)) -> tuple[list[PlannedRun], list[dict]]:
    """The runs that the paper's table has a row for, and the files or cells left out (with why).

    Model size 28 trains on the 28-px file. Model size 224 trains, as the paper, on the 28-px file
    resized up (nearest); without a 28-px file it uses the native ``{flag}_224.npz`` (flagged in the
    report). 64- and 128-px files have no row in the table and are listed as left out.
    """
    by_flag: dict[str, dict[int, MedMNISTFile]] = {}
    for item in files:
        by_flag.setdefault(item.flag, {})[item.size] = item
    runs, left_out = [], []
    for flag, available in by_flag.items():
        used: set[int] = set()
        unplanned = []
        for arch in archs:
            for size in sizes:
                source = available.get(28) or (available.get(224) if size == 224 else None)
                if source is None:
                    unplanned.append(medmnist_v2_model(arch, size))
                    continue
                used.add(source.size)
                runs.append(PlannedRun(flag, arch, size, source))
        if unplanned:
            left_out.append({"dataset": flag, "file": ", ".join(p.path.name for p in available.values()),
                             "why": f"{', '.join(unplanned)} need{'s' if len(unplanned) == 1 else ''} the 28-px "
                                    f"file {flag}.npz"})
        for size, item in available.items():
            if size not in used:
                left_out.append({"dataset": flag, "file": item.path.name,
                                 "why": f"no run uses the {size}-px file (the paper's table has 28-px data, "
                                        f"resized up for the 224 models)"})
    return runs, left_out


# -- running ----------------------------------------------------------------------------------------
def run_medmnist_v2(settings: RunSettings, dataset: str, arch: str, size: int, seeds: int, epochs: int | None = None,
                    root: Path | None = None, source_size: int | None = None, dataset_options: dict | None = None,
                    init_model: str | None = None) -> tuple[CellOutcome, ResultRecord]:
    """One ``medmnist-v2`` cell (the paper's ResNet, or ``init_model`` + a linear head) -> (outcome, record).

    ``dataset``: registry name (``medmnist:breastmnist``); ``root``: the folder or the npz itself;
    ``source_size``: which file resolution to load (the dataset option ``size``; default 28).
    """
    name = DATASETS.resolve(dataset)
    options = dict(dataset_options or {})
    if source_size is not None and source_size != 28:
        options["size"] = source_size
    overrides = {"seeds": seeds, "size": size, **({"epochs": epochs} if epochs else {}),
                 **({"init": "encoder"} if init_model else {})}
    # the encoder-init arm trains another network than the paper's: never the same record name
    variant = f"size{size}-seeds{seeds}" + (f"-epochs{epochs}" if epochs else "") + ("-init-encoder" if init_model else "")
    cell_settings = replace(settings, roots={**settings.roots, **({name: Path(root)} if root else {})},
                            dataset_options={**settings.dataset_options, name: options})
    outcome = Runner(cell_settings).run(Cell(init_model or f"{arch}-random", name, PROTOCOL, overrides=overrides,
                                             variant=variant))
    record = outcome.record or ResultRecord.from_json(json.loads(outcome.path.read_text()))
    return outcome, record


def report_rows(record: ResultRecord, outcome: CellOutcome, arch: str, size: int, tolerance: float) -> list[dict]:
    """Fidelity-report rows (one per metric) of one finished run."""
    info = record.protocol.get("dataset", {}).get("info", {})
    resolved = record.protocol.get("resolved", {})
    base = {"dataset": info.get("flag", record.identity.dataset), "file": None, "md5": None, "arch": arch, "size": size,
            "source_px": info.get("size"), "seeds": len(resolved.get("seeds", [])) or None,
            "epochs": record.protocol.get("options", {}).get("epochs"),
            "status": outcome.status, "wall_seconds": record.provenance.get("wall_seconds"),
            "record": str(outcome.path)}
    md5 = record.extra.get("md5") if isinstance(record.extra, dict) else None
    if md5:
        base.update(file=Path(md5.get("file", "")).name, md5=md5.get("status"))
    rows = []
    for row in medmnist_v2_comparison(record, arch, size, tolerance):
        rows.append({**base, "metric": row["metric"], "ours_mean": row["ours_mean"], "ours_sd": row["ours_sd"],
                     "per_seed": " ".join(f"{v:.4f}" for v in row["per_seed"]), "published": row["published"],
                     "difference": row.get("difference"), "within_tolerance": row.get("within_tolerance"),
                     "within_spread": row.get("within_spread"), "verdict": row["verdict"],
                     "single_source": row["single_source"], "best_other_model": row["best_other_model"],
                     "best_other_value": row["best_other_value"], "note": row["note"]})
    return rows


def run_medmnist_v2_all(settings: RunSettings, root: Path, archs: tuple[str, ...], sizes: tuple[int, ...], seeds: int,
                        epochs: int | None = None, tolerance: float = 0.03,
                        report: Callable[[str], None] = lambda line: None) -> tuple[list[dict], list[dict]]:
    """Every planned run under ``root`` -> (report rows, left-out files/cells).

    A run whose data is unusable (a :class:`DatasetError` or a protocol ``ValueError``) becomes an
    ``error`` row naming the reason, and the other runs go on.
    """
    files = discover_medmnist(root)
    if not files:
        raise DatasetError(f"reproduce --all: no MedMNIST .npz file under {root} (expected names such as "
                           f"breastmnist.npz or dermamnist_224.npz; `python cli.py data download medmnist:<flag>`)")
    runs, left_out = plan_medmnist_v2(files, archs, sizes)
    rows: list[dict] = []
    for number, run in enumerate(runs, 1):
        report(f"[{number}/{len(runs)}] {medmnist_v2_model(run.arch, run.size)} on {run.flag} ({run.source.path.name})")
        try:
            outcome, record = run_medmnist_v2(settings, medmnist_v2_dataset(run.flag), run.arch, run.size, seeds, epochs,
                                              root=run.source.path, source_size=run.source.size)
        except (DatasetError, ValueError) as error:
            log.warning("reproduce --all: %s %s failed: %s", run.flag, run.arch, error)
            rows.append({"dataset": run.flag, "file": run.source.path.name, "arch": run.arch, "size": run.size,
                         "source_px": run.source.size, "metric": "", "verdict": "error", "status": "error",
                         "note": str(error)})
            continue
        new_rows = report_rows(record, outcome, run.arch, run.size, tolerance)
        rows.extend(new_rows)
        report("  " + "; ".join(f"{r['metric']} {r['ours_mean']:.3f} vs {r['published']:.3f}: {r['verdict']}"
                                if r["published"] is not None else f"{r['metric']} {r['ours_mean']:.3f}: no reference"
                                for r in new_rows) + f" ({outcome.status})")
    return rows, left_out


# -- the report -------------------------------------------------------------------------------------
REPORT_COLUMNS = ["dataset", "arch", "size", "source_px", "file", "md5", "metric", "seeds", "epochs", "ours_mean",
                  "ours_sd", "per_seed", "published", "difference", "within_tolerance", "within_spread", "verdict",
                  "single_source", "best_other_model", "best_other_value", "status", "wall_seconds", "note", "record"]


def fidelity_table(rows: list[dict]) -> pd.DataFrame:
    """The report rows as a frame with :data:`REPORT_COLUMNS` (the CSV)."""
    return pd.DataFrame(rows, columns=REPORT_COLUMNS)


def fidelity_markdown(rows: list[dict], left_out: list[dict], tolerance: float = 0.03) -> str:
    """Markdown: the per-cell comparison, wall time per set, what was left out, the verdict legend."""
    frame = fidelity_table(rows)
    shown = []
    for row in frame.to_dict("records"):
        if row["status"] == "error":
            shown.append({"dataset": row["dataset"], "model": medmnist_v2_model(row["arch"], int(row["size"])),
                          "source": row["file"], "verdict": "error", "note": row["note"]})
            continue
        published = row["published"]
        has_reference = published is not None and pd.notna(published)
        shown.append({
            "dataset": row["dataset"], "model": medmnist_v2_model(row["arch"], int(row["size"])),
            "source": f"{row['file']} ({row['md5'] or 'md5 ?'})", "metric": row["metric"],
            "ours (mean ± sd)": f"{row['ours_mean']:.3f} ± {row['ours_sd']:.3f} (n={row['seeds']}, {row['epochs']} ep)",
            "published": (f"{published:.3f}" + ("*" if row["single_source"] else "")) if has_reference else "(none)",
            "diff": f"{row['difference']:+.3f}" if has_reference else "",
            "verdict": row["verdict"],
            "best other (context)": (f"{row['best_other_value']:.3f} {row['best_other_model']}"
                                     if isinstance(row["best_other_model"], str) else ""),
            "note": row["note"] or ""})
    parts = ["# MedMNIST v2 fidelity report", "",
             f"Ours (the `medmnist-v2` protocol, mean ± sd over seeds) against {MEDMNIST_V2}, {MEDMNIST_V2_TABLE}: "
             f"the same-arch row, and for context the best of the table's other methods. Tolerance {tolerance:.2f}.",
             ""]
    if shown:
        parts += [tabulate(pd.DataFrame(shown).fillna(""), headers="keys", tablefmt="github", showindex=False,
                           disable_numparse=True), ""]
    done = frame[frame["status"] != "error"].drop_duplicates(subset=["record"])
    if not done.empty:
        wall = done.groupby("dataset", sort=False).agg(runs=("record", "size"), wall_seconds=("wall_seconds", "sum"))
        parts += ["## Wall time per set", "", tabulate(wall.reset_index(), headers="keys", tablefmt="github",
                                                         showindex=False, floatfmt=".1f"), "",
                  "Seconds of the run that wrote each record (a record reused from an earlier run keeps its "
                  "original time; status `skipped`).", ""]
    if left_out:
        parts += ["## Left out", "", tabulate(pd.DataFrame(left_out), headers="keys", tablefmt="github",
                                              showindex=False), ""]
    parts += ["## Verdicts", ""] + [f"- **{name}**: {text}" for name, text in VERDICTS.items()] + [
        "- **no reference**: the paper's table has no row for this cell", "- **error**: the run could not start (see note)",
        "", "`*`: the published value was seen in one source only (the project site's table). `md5`: `ok` = the "
        "published file, `mismatch` = another file (re-saved or changed; results may not be comparable)."]
    return "\n".join(parts) + "\n"


def write_fidelity_report(rows: list[dict], left_out: list[dict], path: Path, tolerance: float = 0.03) -> tuple[Path, Path]:
    """Markdown at ``path`` (``.md`` added when missing) and the CSV beside it, both written atomically."""
    markdown = Path(path) if Path(path).suffix == ".md" else Path(f"{path}.md")
    csv = markdown.with_suffix(".csv")
    atomic_write_text(markdown, fidelity_markdown(rows, left_out, tolerance))
    atomic_write_text(csv, fidelity_table(rows).to_csv(index=False))
    return markdown, csv
