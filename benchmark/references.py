"""Published reference results, kept apart from our runs.

A :class:`Reference` is one number from a paper's table (paper, table, model, dataset, metric,
value). ``reproduce`` compares our per-seed results with them (:func:`compare`); the leaderboard
lists them in a separate "Published references" section, never inside the ranked tables.

Only numbers checked against the source are registered; a row missing here was not verified.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MEDMNIST_V2 = "MedMNIST v2 (Yang et al., Scientific Data 2023)"
MEDMNIST_V2_TABLE = "2D benchmark table (test AUC / ACC)"


@dataclass(frozen=True)
class Reference:
    paper: str
    table: str
    model: str  # e.g. "ResNet-18 (28)"
    dataset: str  # registry name, e.g. "medmnist:breastmnist"
    metric: str  # our metric name: "auroc" | "accuracy"
    value: float
    protocol: str = ""  # the evaluator/preset that reproduces it, e.g. "medmnist-v2"
    note: str = ""


REFERENCES: list[Reference] = [
    Reference(MEDMNIST_V2, MEDMNIST_V2_TABLE, "ResNet-18 (28)", "medmnist:breastmnist", "auroc", 0.901, "medmnist-v2",
              "released runs: 0.898 / 0.917 / 0.889"),
    Reference(MEDMNIST_V2, MEDMNIST_V2_TABLE, "ResNet-18 (28)", "medmnist:breastmnist", "accuracy", 0.863, "medmnist-v2"),
    Reference(MEDMNIST_V2, MEDMNIST_V2_TABLE, "ResNet-18 (224)", "medmnist:breastmnist", "auroc", 0.891, "medmnist-v2"),
    Reference(MEDMNIST_V2, MEDMNIST_V2_TABLE, "ResNet-18 (224)", "medmnist:breastmnist", "accuracy", 0.833, "medmnist-v2"),
    Reference(MEDMNIST_V2, MEDMNIST_V2_TABLE, "ResNet-50 (28)", "medmnist:breastmnist", "auroc", 0.857, "medmnist-v2"),
]


def medmnist_v2_model(arch: str, size: int) -> str:
    """``resnet18``, 28 -> ``ResNet-18 (28)`` (the paper's row names)."""
    return f"ResNet-{arch.lower().removeprefix('resnet')} ({size})"


def references_for(dataset: str | None = None, model: str | None = None, protocol: str | None = None) -> list[Reference]:
    """Registered references, filtered by (built) dataset name, model and protocol.

    The name must match exactly: ``medmnist:breastmnist-64`` (another source file) has no MedMNIST v2 reference.
    """
    return [r for r in REFERENCES if (dataset is None or r.dataset == dataset) and (model is None or r.model == model)
            and (protocol is None or r.protocol == protocol)]


def compare(values: list[float], published: float, tolerance: float = 0.03) -> dict:
    """Our per-seed ``values`` against a ``published`` number.

    ``within_spread``: published lies in mean +- 2 sd of the seeds (sd with ddof=1; a single seed has
    no spread, so only equality counts). ``within_tolerance``: |mean - published| <= ``tolerance``
    (the issue's acceptance bound, 0.03).
    """
    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    low, high = mean - 2 * sd, mean + 2 * sd
    return {"mean": mean, "sd": sd, "values": [float(x) for x in v], "published": float(published),
            "difference": mean - float(published), "spread": [low, high],
            "within_spread": bool(low <= published <= high),
            "within_tolerance": bool(abs(mean - published) <= tolerance + 1e-12), "tolerance": tolerance}


def reference_rows(datasets: list[str]) -> list[dict]:
    """Rows for the leaderboard's "Published references" section (datasets present in the results)."""
    present = set(datasets)
    return [{"dataset": r.dataset, "model": r.model, "metric": r.metric, "value": f"{r.value:.3f}",
             "source": f"{r.paper}, {r.table}", "status": "published"}
            for r in REFERENCES if r.dataset in present]
