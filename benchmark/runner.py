"""Running cells (encoder x dataset x evaluator x variant) into result records.

A cell whose record exists is skipped (unless ``overwrite``), so a killed grid resumes where it
stopped; ``shard=(i, n)`` takes every n-th cell for a SLURM array or any scheduler, all writing
into one results folder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import platform
import subprocess
import time
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import torch

from benchmark import distributed
from benchmark.records import Identity, ResultRecord, record_exists, record_path, write_record
from datasets.base import ImageDataset
from datasets.registry import DATASETS
from datasets.splits import SplitAssignment, resolve_splits
from evaluators.base import EvalContext, ExtractionSettings
from evaluators.registry import EVALUATORS
from pretrained.encoder import Encoder, LoadOptions
from pretrained.registry import ENCODERS

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RunSettings:
    """Run-wide settings shared by every cell (what the CLI flags resolve to)."""

    results_dir: Path
    extraction: ExtractionSettings
    load_options: LoadOptions = field(default_factory=LoadOptions)
    roots: dict[str, Path] = field(default_factory=dict)
    dataset_options: dict[str, dict] = field(default_factory=dict)
    seed: int = 0
    split_file: Path | None = None
    overwrite: bool = False
    progress: Callable[[str, int], Any] | None = None


@dataclass
class Cell:
    encoder: str
    dataset: str
    evaluator: str
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    variant: str | None = None



def variant_name(preset: str | None, overrides: dict[str, Any]) -> str:
    """``default`` / the preset name, plus a short hash when options were overridden."""
    base = preset or "default"
    if not overrides:
        return base
    digest = hashlib.sha256(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{base}-{digest}"


@dataclass
class CellOutcome:
    cell: Cell
    status: str  # "done" | "skipped"
    path: Path
    record: ResultRecord | None = None


class Runner:
    """Runs cells, reusing datasets, splits and the built encoder between consecutive cells."""

    def __init__(self, settings: RunSettings):
        self.settings = settings
        self._datasets: dict[str, ImageDataset] = {}
        self._splits: dict[str, SplitAssignment] = {}
        self._encoders: dict[str, Encoder] = {}

    def dataset(self, name: str) -> ImageDataset:
        name = DATASETS.resolve(name)
        if name not in self._datasets:
            spec = DATASETS.get(name)
            root = self.settings.roots.get(name)
            self._datasets[name] = spec.build(Path(root) if root else None, self.settings.dataset_options.get(name, {}))
        return self._datasets[name]

    def splits(self, name: str) -> SplitAssignment:
        dataset = self.dataset(name)
        if dataset.name not in self._splits:
            self._splits[dataset.name] = resolve_splits(dataset, self.settings.results_dir, seed=self.settings.seed,
                                                        split_file=self.settings.split_file)
        return self._splits[dataset.name]

    def identity(self, cell: Cell) -> Identity:
        """The record identity of ``cell``; the dataset part is the built dataset's name (options included)."""
        dataset = self.dataset(cell.dataset)
        return Identity(ENCODERS.resolve(cell.encoder), dataset.name, EVALUATORS.resolve(cell.evaluator),
                        cell.variant or variant_name(cell.preset, cell.overrides))

    def run(self, cell: Cell) -> CellOutcome:
        identity = self.identity(cell)
        path = record_path(self.settings.results_dir, identity)
        spec = EVALUATORS.get(identity.evaluator)
        options = spec.resolve_options(cell.preset, cell.overrides)
        # under torchrun every rank must take rank 0's decision, or the collectives would deadlock
        if not self.settings.overwrite and distributed.broadcast_object(record_exists(self.settings.results_dir, identity)):
            differing = distributed.broadcast_object(
                _differing_options(path, options) if distributed.is_main_process() else [])
            if differing:
                raise ValueError(f"{path} holds a result of {identity.evaluator} with other options "
                                 f"({', '.join(differing)}) under the same name; pass --overwrite to replace it, "
                                 f"or write to another --results folder")
            log.info("skipping %s: record exists at %s", identity, path)
            return CellOutcome(cell, "skipped", path)
        dataset = self.dataset(cell.dataset)
        splits = self.splits(cell.dataset)
        encoder_spec = ENCODERS.get(identity.encoder)
        artifacts = self.settings.results_dir / "artifacts" / identity.evaluator / identity.dataset / path.stem
        context = EvalContext(encoder_spec, self.settings.load_options, dataset, splits, self.settings.extraction,
                              artifacts, seed=self.settings.seed, encoder_cache=self._encoders,
                              progress=self.settings.progress)
        start = time.perf_counter()
        output = spec.run(context, options)
        wall = time.perf_counter() - start
        encoder = context.encoder()
        protocol = {
            "evaluator": identity.evaluator,
            "options": options,
            "resolved": output.resolved,
            "dataset": {"name": dataset.name, "manifest_sha256": dataset.manifest_hash(), "task": dataset.task,
                        "classes": dataset.classes, "info": _scalar_items(dataset.info)},
            "splits": {"source": "official" if splits.source == "official" else "generated-or-file",
                       "sha256": splits.sha256, "seed": self.settings.seed,
                       "sizes": {s: int(len(splits.indices(s))) for s in ("train", "val", "test")}},
            "image_size_override": self.settings.extraction.image_size,
        }
        provenance = {
            "encoder": encoder.provenance,
            "encoder_kind": encoder_spec.kind,
            "preprocessing": encoder.preprocessing.to_dict(),
            "split_source": splits.source,
            "device": str(self.settings.extraction.device),
            "device_name": device_name(self.settings.extraction.device),
            "versions": library_versions(),
            "git_commit": git_commit(),
            "host": platform.node(),
            "python": platform.python_version(),
            "wall_seconds": wall,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **{f"cost_{k}": v for k, v in output.cost.items()},
        }
        record = ResultRecord(identity=identity, metrics=output.metrics, primary_metric=output.primary_metric,
                              protocol=protocol, provenance=provenance, subgroups=output.subgroups, extra=output.extra)
        if distributed.is_main_process():  # under torchrun only rank 0 writes
            write_record(record, self.settings.results_dir)
        return CellOutcome(cell, "done", path, record)


def _differing_options(path: Path, options: dict) -> list[str]:
    """Option names whose value in the record at ``path`` differs from ``options`` (JSON-normalised)."""
    recorded = json.loads(path.read_text()).get("protocol", {}).get("options", {})
    current = json.loads(json.dumps(options, default=str))

    def canonical(value: Any) -> str:  # text, so that NaN equals NaN and key order does not matter
        return json.dumps(value, sort_keys=True)
    return sorted(key for key in set(recorded) | set(current) if canonical(recorded.get(key)) != canonical(current.get(key)))


def _scalar_items(info: dict) -> dict:
    """The JSON-scalar facts of ``dataset.info`` (md5 status, low-data settings, dropped counts...)."""
    return {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool)) or v is None}


def shard_cells(cells: list[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    """Cells of shard ``i`` of ``n`` (0-based), by position, stable across runs."""
    if shard is None:
        return cells
    index, count = shard
    return [cell for position, cell in enumerate(cells) if position % count == index]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    versions = {}
    for package in ("torch", "torchvision", "numpy", "scikit-learn", "pandas", "timm", "captum", "scipy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


@lru_cache(maxsize=1)
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() if out.returncode == 0 else "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty and commit != "unknown" else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
