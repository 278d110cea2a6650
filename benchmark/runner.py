"""Running cells (encoder x dataset x evaluator x variant) into result records.

Before any compute a cell is *planned*: its record identity and the protocol it would record
(options, input-size override, dataset manifest and options, split sha256 and sizes, seed). The
plan is compared with the record already on disk: same protocol hash -> skip; no record -> run;
an unreadable record -> recompute (it is replaced); a valid record made under another protocol
-> refuse (never a silent reuse, never a silent overwrite). Settings that make another experiment
(``-o`` overrides, an input-size override, a seed, a split file) are part of the variant name, so
those runs get records of their own and coexist. A cell being computed is claimed with a lock, so
concurrent runs on one results folder (``--shard i/n``, or two commands) never compute a cell at
the same time; a killed run releases its claims and loses at most the cell in flight.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import platform
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from benchmark import distributed
from benchmark.locks import file_lock
from benchmark.predictions import write_predictions
from benchmark.records import (Identity, RecordError, ResultRecord, jsonable, protocol_differences, protocol_hash,
                               read_record, record_path, write_record)
from datasets.base import ImageDataset
from datasets.registry import DATASETS
from datasets.splits import SplitAssignment, resolve_splits
from evaluators.base import EvalContext, ExtractionSettings, refuse_multilabel
from evaluators.registry import EVALUATORS
from pretrained.encoder import Encoder, LoadOptions
from pretrained.registry import ENCODERS

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


class RecordConflictError(ValueError):
    """A cell's record exists but was made under another protocol (the message names what differs)."""


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
    variant: str | None = None  # an explicit record variant name (used verbatim)


def variant_name(preset: str | None, overrides: dict[str, Any], *, image_size: int | None = None, seed: int = 0,
                 split_sha256: str | None = None) -> str:
    """The record variant of a cell: the preset name (or ``default``), then what makes it another experiment.

    ``-<hash8>`` of the ``-o`` overrides, ``-<N>px`` for an input-size override, ``-seed<N>`` for a
    seed other than 0, ``-split<sha8>`` for a user split file; e.g. ``quick-128px``, ``default-1a2b3c4d-seed3``.
    """
    parts = [preset or "default"]
    if overrides:
        parts.append(hashlib.sha256(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8])
    if image_size:
        parts.append(f"{int(image_size)}px")
    if seed:
        parts.append(f"seed{seed}")
    if split_sha256:
        parts.append(f"split{split_sha256[:8]}")
    return "-".join(parts)


@dataclass
class CellPlan:
    """What running ``cell`` would do, decided before any compute.

    ``action``: ``run`` (no record), ``skip`` (the record's protocol matches), ``recompute`` (the
    record is unreadable, or ``--overwrite``), ``refuse`` (a valid record of another protocol;
    ``reason`` names what differs and how to fix it).
    """

    cell: Cell
    identity: Identity
    path: Path
    protocol: dict[str, Any]  # the record's protocol to be, less the run-time "resolved" part
    action: str
    reason: str = ""
    record: ResultRecord | None = None  # the existing record (on rank 0)

    @property
    def protocol_hash(self) -> str:
        return protocol_hash(self.protocol)


@dataclass
class CellOutcome:
    cell: Cell
    status: str  # "done" | "skipped" | "busy" (another process holds the cell; only with wait=False)
    path: Path
    record: ResultRecord | None = None
    plan: CellPlan | None = None


class Runner:
    """Plans and runs cells, reusing datasets, splits and the built encoder between consecutive cells.

    ``read_only=True`` (dry runs) plans without writing anything (no split files).
    """

    def __init__(self, settings: RunSettings, *, read_only: bool = False):
        self.settings = settings
        self.read_only = read_only
        self.started = time.time()
        self._datasets: dict[str, ImageDataset] = {}
        self._splits: dict[str, SplitAssignment] = {}
        self._encoders: dict[str, Encoder] = {}

    def dataset(self, name: str) -> ImageDataset:
        name = DATASETS.resolve(name)
        if name not in self._datasets:
            spec = DATASETS.get(name)
            root = self.settings.roots.get(name)
            self._datasets[name] = spec.build(Path(root) if root else None, self.dataset_options(name))
        return self._datasets[name]

    def dataset_options(self, name: str) -> dict[str, Any]:
        return dict(self.settings.dataset_options.get(DATASETS.resolve(name), {}))

    def splits(self, name: str) -> SplitAssignment:
        dataset = self.dataset(name)
        if dataset.name not in self._splits:
            self._splits[dataset.name] = resolve_splits(dataset, self.settings.results_dir, seed=self.settings.seed,
                                                        split_file=self.settings.split_file, save=not self.read_only)
        return self._splits[dataset.name]

    def identity(self, cell: Cell) -> Identity:
        """The record identity of ``cell``: the built dataset's name, the variant with what distinguishes the run."""
        return self._identity_and_protocol(cell)[0]

    def _identity_and_protocol(self, cell: Cell) -> tuple[Identity, dict[str, Any]]:
        evaluator = EVALUATORS.resolve(cell.evaluator)
        options = EVALUATORS.get(evaluator).resolve_options(cell.preset, cell.overrides)
        dataset, splits = self.dataset(cell.dataset), self.splits(cell.dataset)
        dataset_facts = {"name": dataset.name, "manifest_sha256": dataset.manifest_hash(), "task": dataset.task,
                         "classes": dataset.classes, "info": _scalar_items(dataset.info)}
        dataset_options = self.dataset_options(cell.dataset)
        if dataset_options:  # only when given, so that the records of runs without any keep their hash
            dataset_facts["options"] = dataset_options
        protocol = {
            "evaluator": evaluator,
            "options": options,
            "dataset": dataset_facts,
            "splits": {"source": "official" if splits.source == "official" else "generated-or-file",
                       "sha256": splits.sha256, "seed": self.settings.seed,
                       "sizes": {s: int(len(splits.indices(s))) for s in ("train", "val", "test")}},
            "image_size_override": self.settings.extraction.image_size,
        }
        variant = cell.variant or variant_name(
            cell.preset, cell.overrides, image_size=self.settings.extraction.image_size, seed=self.settings.seed,
            split_sha256=splits.sha256 if self.settings.split_file is not None else None)
        identity = Identity(ENCODERS.resolve(cell.encoder), dataset.name, evaluator, variant)
        # as it will read back from the record's JSON (tuples -> lists, NaN -> null)
        return identity, json.loads(json.dumps(jsonable(protocol), default=str))

    def plan(self, cell: Cell) -> CellPlan:
        """Decide, before any compute, whether ``cell`` runs, is skipped, recomputed or refused."""
        identity, protocol = self._identity_and_protocol(cell)
        path = record_path(self.settings.results_dir, identity)
        action, reason, record = self._decide(path, protocol)
        return CellPlan(cell, identity, path, protocol, action, reason, record)

    def run(self, cell: Cell, *, wait: bool = True) -> CellOutcome:
        """Run ``cell`` into its record unless its plan says skip (refuse: :class:`RecordConflictError`).

        The cell is claimed first. When another process holds the claim, ``wait=False`` returns a
        ``busy`` outcome at once; ``wait=True`` waits, then decides again (usually: skip).
        """
        plan = self.plan(cell)
        if plan.action == "refuse":
            raise RecordConflictError(plan.reason)
        if plan.action == "skip":
            log.info("skipping %s: record %s matches", plan.identity, plan.path)
            self._drop_stale_claim(plan.path)
            return CellOutcome(cell, "skipped", plan.path, plan.record, plan)
        with self._claim(plan.path, wait) as claimed:
            if not claimed:
                return CellOutcome(cell, "busy", plan.path, None, plan)
            # decided again under the claim: another process may have finished the cell meanwhile
            action, reason, record = self._decide(plan.path, plan.protocol, fresh_since=self.started)
            if action == "refuse":
                raise RecordConflictError(reason)
            if action == "skip":
                return CellOutcome(cell, "skipped", plan.path, record, plan)
            record = self._compute(plan)
        return CellOutcome(cell, "done", plan.path, record, plan)

    def _decide(self, path: Path, protocol: dict,
                fresh_since: float | None = None) -> tuple[str, str, ResultRecord | None]:
        """Rank 0 reads the record and decides; every rank takes its decision (or collectives would deadlock)."""
        decision = (decide(path, protocol, overwrite=self.settings.overwrite, fresh_since=fresh_since)
                    if distributed.is_main_process() else ("", "", None))
        action, reason = distributed.broadcast_object(decision[:2])
        return action, reason, decision[2]

    @contextmanager
    def _claim(self, path: Path, wait: bool) -> Iterator[bool]:
        """Hold the cell's claim: a lock file beside its record, held by rank 0 for every rank."""
        if not distributed.is_main_process():
            yield distributed.broadcast_object(None)
            return
        with file_lock(path.with_name(f".{path.name}.lock"), wait=wait, remove=True) as claimed:
            yield distributed.broadcast_object(claimed)

    def _drop_stale_claim(self, path: Path) -> None:
        """Remove the claim file a killed run left beside a finished record (when nobody holds it)."""
        claim = path.with_name(f".{path.name}.lock")
        if distributed.is_main_process() and not self.read_only and claim.exists():
            with file_lock(claim, wait=False, remove=True):
                pass

    def _compute(self, plan: CellPlan) -> ResultRecord:
        identity, cell = plan.identity, plan.cell
        spec = EVALUATORS.get(identity.evaluator)
        options = spec.resolve_options(cell.preset, cell.overrides)
        dataset = self.dataset(cell.dataset)
        refuse_multilabel(spec, dataset, sorted(name for name, other in EVALUATORS.items() if other.multilabel))
        splits = self.splits(cell.dataset)
        encoder_spec = ENCODERS.get(identity.encoder)
        artifacts = self.settings.results_dir / "artifacts" / identity.evaluator / identity.dataset / plan.path.stem
        context = EvalContext(encoder_spec, self.settings.load_options, dataset, splits, self.settings.extraction,
                              artifacts, seed=self.settings.seed, encoder_cache=self._encoders,
                              progress=self.settings.progress)
        start = time.perf_counter()
        output = spec.run(context, options)
        wall = time.perf_counter() - start
        encoder = context.encoder()
        # the protocol planned before the run (what the next run compares with), plus the run-time choices
        protocol = {**copy.deepcopy(plan.protocol), "resolved": output.resolved}
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
        if context.extraction_provenance() is not None:  # which decode path and precision made the features
            provenance["extraction"] = context.extraction_provenance()
        extra = dict(output.extra)
        if output.predictions is not None:  # side file first: a record never points at a file not yet written
            extra["predictions_file"] = write_predictions(output.predictions, plan.path,
                                                          write=distributed.is_main_process())
        record = ResultRecord(identity=identity, metrics=output.metrics, primary_metric=output.primary_metric,
                              protocol=protocol, provenance=provenance, subgroups=output.subgroups, extra=extra)
        if distributed.is_main_process():  # under torchrun only rank 0 writes
            write_record(record, self.settings.results_dir)
        return record


def decide(path: Path, protocol: dict, *, overwrite: bool = False,
           fresh_since: float | None = None) -> tuple[str, str, ResultRecord | None]:
    """(action, reason, existing record) for the record at ``path`` against the planned ``protocol``.

    With ``overwrite``, a matching record written after ``fresh_since`` (by a concurrent run with
    ``--overwrite`` too) is kept rather than computed twice.
    """
    if not path.exists():
        return "run", "", None
    try:
        record = read_record(path)
    except RecordError as error:
        log.warning("record %s is unreadable (%s); the cell will be recomputed", path, error)
        return "recompute", f"record unreadable ({error}): recomputed and replaced", None
    matches = protocol_hash(record.protocol) == protocol_hash(protocol)
    if overwrite:
        if matches and fresh_since is not None and _mtime(path) >= fresh_since:
            return "skip", "written by a concurrent run", record
        return "recompute", "--overwrite", record
    if matches:
        return "skip", "record matches", record
    differences = "; ".join(protocol_differences(record.protocol, protocol))
    return ("refuse", f"{path} was made under another protocol ({differences}); pass --overwrite to replace it, "
                      f"or use another --results folder", record)


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


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
