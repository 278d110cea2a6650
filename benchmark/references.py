"""Published reference results, kept apart from our runs.

A :class:`Reference` is one number from a paper's table (paper, table, model, dataset, metric,
value). ``reproduce`` compares our per-seed results with them (:func:`compare`); the leaderboard
lists them in a separate "Published references" section, never inside the ranked tables.

Only numbers checked against the source are registered; a row missing here was not verified.

The MedMNIST v2 2D benchmark table (Yang et al., "MedMNIST v2 - A large-scale lightweight benchmark
for 2D and 3D biomedical image classification", Scientific Data 10, 41, 2023; test AUC and ACC of
ResNet-18/50 at 28 and 224 px, auto-sklearn, AutoKeras and Google AutoML Vision on the 12 2D sets)
is registered whole from :data:`MEDMNIST_V2_2D_CSV`. Source: the project site's "Benchmarking"
tables (https://medmnist.com, GitHub MedMNIST/medmnist.github.io ``index.html``; unchanged there from
2021-09-18 to its latest version, which covers both the arXiv v3 and the journal version),
cross-checked cell by cell against independent copies (README tables and result images of public
repositories that cite the paper; one recomputes BreastMNIST ResNet-18 (28) from the authors'
released predictions: 0.9015 / 0.8632). ``*_two_sources = no`` marks the 14 values seen in the
project site's table only (BreastMNIST except ResNet-18 (28); ChestMNIST ACC of the two 28-px
ResNets): their :attr:`Reference.single_source` is True. Not the MedMNIST v1 table (ISBI 2021,
10 datasets), whose values differ in 138 of 140 cells.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

MEDMNIST_V2 = "MedMNIST v2 (Yang et al., Scientific Data 2023)"
MEDMNIST_V2_TABLE = "2D benchmark table (test AUC / ACC)"
MEDMNIST_V2_SOURCE = "https://medmnist.com (MedMNIST/medmnist.github.io index.html, Benchmarking)"
MEDMNIST_V2_PROTOCOL = "medmnist-v2"

# Verbatim copy of the curated table (shared/references/medmnist_v2_2d.csv); a test checks they agree.
MEDMNIST_V2_2D_CSV = """\
dataset,method,auc,acc,auc_two_sources,acc_two_sources
PathMNIST,ResNet-18 (28),0.983,0.907,yes,yes
PathMNIST,ResNet-18 (224),0.989,0.909,yes,yes
PathMNIST,ResNet-50 (28),0.990,0.911,yes,yes
PathMNIST,ResNet-50 (224),0.989,0.892,yes,yes
PathMNIST,auto-sklearn,0.934,0.716,yes,yes
PathMNIST,AutoKeras,0.959,0.834,yes,yes
PathMNIST,Google AutoML Vision,0.944,0.728,yes,yes
ChestMNIST,ResNet-18 (28),0.768,0.947,yes,no
ChestMNIST,ResNet-18 (224),0.773,0.947,yes,yes
ChestMNIST,ResNet-50 (28),0.769,0.947,yes,no
ChestMNIST,ResNet-50 (224),0.773,0.948,yes,yes
ChestMNIST,auto-sklearn,0.649,0.779,yes,yes
ChestMNIST,AutoKeras,0.742,0.937,yes,yes
ChestMNIST,Google AutoML Vision,0.778,0.948,yes,yes
DermaMNIST,ResNet-18 (28),0.917,0.735,yes,yes
DermaMNIST,ResNet-18 (224),0.920,0.754,yes,yes
DermaMNIST,ResNet-50 (28),0.913,0.735,yes,yes
DermaMNIST,ResNet-50 (224),0.912,0.731,yes,yes
DermaMNIST,auto-sklearn,0.902,0.719,yes,yes
DermaMNIST,AutoKeras,0.915,0.749,yes,yes
DermaMNIST,Google AutoML Vision,0.914,0.768,yes,yes
OCTMNIST,ResNet-18 (28),0.943,0.743,yes,yes
OCTMNIST,ResNet-18 (224),0.958,0.763,yes,yes
OCTMNIST,ResNet-50 (28),0.952,0.762,yes,yes
OCTMNIST,ResNet-50 (224),0.958,0.776,yes,yes
OCTMNIST,auto-sklearn,0.887,0.601,yes,yes
OCTMNIST,AutoKeras,0.955,0.763,yes,yes
OCTMNIST,Google AutoML Vision,0.963,0.771,yes,yes
PneumoniaMNIST,ResNet-18 (28),0.944,0.854,yes,yes
PneumoniaMNIST,ResNet-18 (224),0.956,0.864,yes,yes
PneumoniaMNIST,ResNet-50 (28),0.948,0.854,yes,yes
PneumoniaMNIST,ResNet-50 (224),0.962,0.884,yes,yes
PneumoniaMNIST,auto-sklearn,0.942,0.855,yes,yes
PneumoniaMNIST,AutoKeras,0.947,0.878,yes,yes
PneumoniaMNIST,Google AutoML Vision,0.991,0.946,yes,yes
RetinaMNIST,ResNet-18 (28),0.717,0.524,yes,yes
RetinaMNIST,ResNet-18 (224),0.710,0.493,yes,yes
RetinaMNIST,ResNet-50 (28),0.726,0.528,yes,yes
RetinaMNIST,ResNet-50 (224),0.716,0.511,yes,yes
RetinaMNIST,auto-sklearn,0.690,0.515,yes,yes
RetinaMNIST,AutoKeras,0.719,0.503,yes,yes
RetinaMNIST,Google AutoML Vision,0.750,0.531,yes,yes
BreastMNIST,ResNet-18 (28),0.901,0.863,yes,yes
BreastMNIST,ResNet-18 (224),0.891,0.833,no,no
BreastMNIST,ResNet-50 (28),0.857,0.812,no,no
BreastMNIST,ResNet-50 (224),0.866,0.842,no,no
BreastMNIST,auto-sklearn,0.836,0.803,no,no
BreastMNIST,AutoKeras,0.871,0.831,no,no
BreastMNIST,Google AutoML Vision,0.919,0.861,no,no
BloodMNIST,ResNet-18 (28),0.998,0.958,yes,yes
BloodMNIST,ResNet-18 (224),0.998,0.963,yes,yes
BloodMNIST,ResNet-50 (28),0.997,0.956,yes,yes
BloodMNIST,ResNet-50 (224),0.997,0.950,yes,yes
BloodMNIST,auto-sklearn,0.984,0.878,yes,yes
BloodMNIST,AutoKeras,0.998,0.961,yes,yes
BloodMNIST,Google AutoML Vision,0.998,0.966,yes,yes
TissueMNIST,ResNet-18 (28),0.930,0.676,yes,yes
TissueMNIST,ResNet-18 (224),0.933,0.681,yes,yes
TissueMNIST,ResNet-50 (28),0.931,0.680,yes,yes
TissueMNIST,ResNet-50 (224),0.932,0.680,yes,yes
TissueMNIST,auto-sklearn,0.828,0.532,yes,yes
TissueMNIST,AutoKeras,0.941,0.703,yes,yes
TissueMNIST,Google AutoML Vision,0.924,0.673,yes,yes
OrganAMNIST,ResNet-18 (28),0.997,0.935,yes,yes
OrganAMNIST,ResNet-18 (224),0.998,0.951,yes,yes
OrganAMNIST,ResNet-50 (28),0.997,0.935,yes,yes
OrganAMNIST,ResNet-50 (224),0.998,0.947,yes,yes
OrganAMNIST,auto-sklearn,0.963,0.762,yes,yes
OrganAMNIST,AutoKeras,0.994,0.905,yes,yes
OrganAMNIST,Google AutoML Vision,0.990,0.886,yes,yes
OrganCMNIST,ResNet-18 (28),0.992,0.900,yes,yes
OrganCMNIST,ResNet-18 (224),0.994,0.920,yes,yes
OrganCMNIST,ResNet-50 (28),0.992,0.905,yes,yes
OrganCMNIST,ResNet-50 (224),0.993,0.911,yes,yes
OrganCMNIST,auto-sklearn,0.976,0.829,yes,yes
OrganCMNIST,AutoKeras,0.990,0.879,yes,yes
OrganCMNIST,Google AutoML Vision,0.988,0.877,yes,yes
OrganSMNIST,ResNet-18 (28),0.972,0.782,yes,yes
OrganSMNIST,ResNet-18 (224),0.974,0.778,yes,yes
OrganSMNIST,ResNet-50 (28),0.972,0.770,yes,yes
OrganSMNIST,ResNet-50 (224),0.975,0.785,yes,yes
OrganSMNIST,auto-sklearn,0.945,0.672,yes,yes
OrganSMNIST,AutoKeras,0.974,0.813,yes,yes
OrganSMNIST,Google AutoML Vision,0.964,0.749,yes,yes
"""
MEDMNIST_V2_METHODS = ("ResNet-18 (28)", "ResNet-18 (224)", "ResNet-50 (28)", "ResNet-50 (224)", "auto-sklearn",
                       "AutoKeras", "Google AutoML Vision")
METRIC_COLUMNS = {"auroc": "auc", "accuracy": "acc"}  # our metric name -> the table's column
# facts about single cells beyond the table (verified against the authors' released runs)
MEDMNIST_V2_NOTES = {("BreastMNIST", "ResNet-18 (28)", "auroc"): "released runs: 0.898 / 0.917 / 0.889"}


@dataclass(frozen=True)
class Reference:
    paper: str
    table: str
    model: str  # e.g. "ResNet-18 (28)"
    dataset: str  # registry name, e.g. "medmnist:breastmnist"
    metric: str  # our metric name: "auroc" | "accuracy"
    value: float
    protocol: str = ""  # the evaluator that reproduces it ("medmnist-v2"); "" for methods we do not run
    note: str = ""
    source: str = ""
    single_source: bool = False  # True: seen in one source only (not confirmed by an independent copy)


def medmnist_v2_dataset(flag_or_title: str) -> str:
    """``BreastMNIST`` or ``breastmnist`` -> the registry name ``medmnist:breastmnist``."""
    return "medmnist:" + flag_or_title.lower().removeprefix("medmnist:")


def parse_medmnist_v2_table(text: str) -> list[Reference]:
    """The table's CSV text (``dataset,method,auc,acc,auc_two_sources,acc_two_sources``) -> references.

    Checked while parsing: every dataset has each of the 7 methods once, values lie in [0, 1] and the
    source flags are ``yes``/``no``.
    """
    rows = list(csv.DictReader(io.StringIO(text)))
    references, seen = [], set()
    for row in rows:
        key = (row["dataset"], row["method"])
        if row["method"] not in MEDMNIST_V2_METHODS or key in seen:
            raise ValueError(f"MedMNIST v2 table: unexpected or repeated row {key}")
        seen.add(key)
        for metric, column in METRIC_COLUMNS.items():
            value, flag = float(row[column]), row[f"{column}_two_sources"]
            if not 0.0 <= value <= 1.0 or flag not in ("yes", "no"):
                raise ValueError(f"MedMNIST v2 table: bad {column} cell for {key}: {row[column]!r}, {flag!r}")
            references.append(Reference(
                MEDMNIST_V2, MEDMNIST_V2_TABLE, row["method"], medmnist_v2_dataset(row["dataset"]), metric, value,
                MEDMNIST_V2_PROTOCOL if row["method"].startswith("ResNet") else "",
                MEDMNIST_V2_NOTES.get((row["dataset"], row["method"], metric), ""), MEDMNIST_V2_SOURCE, flag == "no"))
    datasets = {d for d, _ in seen}
    if len(seen) != len(datasets) * len(MEDMNIST_V2_METHODS):
        raise ValueError("MedMNIST v2 table: every dataset needs all 7 methods")
    return references


REFERENCES: list[Reference] = parse_medmnist_v2_table(MEDMNIST_V2_2D_CSV)


def medmnist_v2_model(arch: str, size: int) -> str:
    """``resnet18``, 28 -> ``ResNet-18 (28)`` (the paper's row names)."""
    return f"ResNet-{arch.lower().removeprefix('resnet')} ({size})"


def references_for(dataset: str | None = None, model: str | None = None, protocol: str | None = None,
                   metric: str | None = None) -> list[Reference]:
    """Registered references, filtered by (built) dataset name, model, protocol and metric.

    The name must match exactly: ``medmnist:breastmnist-64`` (another source file) has no MedMNIST v2 reference.
    """
    return [r for r in REFERENCES if (dataset is None or r.dataset == dataset) and (model is None or r.model == model)
            and (protocol is None or r.protocol == protocol) and (metric is None or r.metric == metric)]


def best_other(dataset: str, metric: str, model: str) -> Reference | None:
    """The best published value of ``metric`` on ``dataset`` among the methods other than ``model``
    (ties: the first in the table's order), for context next to the same-arch row."""
    others = [r for r in references_for(dataset, metric=metric) if r.model != model]
    return max(others, key=lambda r: r.value) if others else None


VERDICTS = {
    "reproduced": "|ours - published| <= tolerance",
    "within seed noise": "outside the tolerance, but the published value lies in our mean ± 2 sd over seeds",
    "lower": "ours is below the published value by more than the tolerance and the seeds' 2 sd",
    "higher": "ours is above the published value by more than the tolerance and the seeds' 2 sd",
}


def compare(values: list[float], published: float, tolerance: float = 0.03) -> dict:
    """Our per-seed ``values`` against a ``published`` number.

    ``within_spread``: published lies in mean +- 2 sd of the seeds (sd with ddof=1; a single seed has
    no spread, so only equality counts). ``within_tolerance``: |mean - published| <= ``tolerance``
    (the issue's acceptance bound, 0.03). ``verdict``: one of :data:`VERDICTS`, in that order of precedence.
    """
    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    low, high = mean - 2 * sd, mean + 2 * sd
    within_spread = bool(low <= published <= high)
    within_tolerance = bool(abs(mean - published) <= tolerance + 1e-12)
    if within_tolerance:
        verdict = "reproduced"
    elif within_spread:
        verdict = "within seed noise"
    else:
        verdict = "lower" if mean < published else "higher"
    return {"mean": mean, "sd": sd, "values": [float(x) for x in v], "published": float(published),
            "difference": mean - float(published), "spread": [low, high], "within_spread": within_spread,
            "within_tolerance": within_tolerance, "tolerance": tolerance, "verdict": verdict}


def reference_rows(datasets: list[str]) -> list[dict]:
    """Rows for the leaderboard's "Published references" section (datasets present in the results)."""
    present = set(datasets)
    return [{"dataset": r.dataset, "model": r.model, "metric": r.metric, "value": f"{r.value:.3f}",
             "source": f"{r.paper}, {r.table}" + (" (one source only)" if r.single_source else ""),
             "status": "published"}
            for r in REFERENCES if r.dataset in present]
