"""Result records: one JSON file per (encoder, dataset, evaluator, variant), written atomically.

A record holds identity, schema version, metrics (value, CI, per-seed values), the primary
metric, the resolved protocol and its hash, and provenance. A killed run loses at most the cell
in flight; a rerun skips cells whose record exists (unless overwriting).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.atomic import atomic_write_text

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Identity:
    encoder: str
    dataset: str
    evaluator: str
    variant: str = "default"


@dataclass
class ResultRecord:
    identity: Identity
    metrics: dict[str, dict[str, Any]]  # name -> {"value": float, "ci": [lo, hi] | None, ...}
    primary_metric: str
    protocol: dict[str, Any]
    provenance: dict[str, Any]
    subgroups: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    protocol_hash: str = ""

    def __post_init__(self) -> None:
        if not self.protocol_hash:
            self.protocol_hash = protocol_hash(self.protocol)
        if self.primary_metric not in self.metrics:
            raise ValueError(f"primary metric '{self.primary_metric}' not among metrics {sorted(self.metrics)}")

    def to_json(self) -> dict:
        return _jsonable(asdict(self))

    @classmethod
    def from_json(cls, data: dict) -> "ResultRecord":
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"schema version {data.get('schema_version')} is not {SCHEMA_VERSION}")
        data = dict(data)
        data["identity"] = Identity(**data["identity"])
        data.pop("protocol_hash", None)  # always recomputed from the protocol itself
        return cls(**data)


def protocol_hash(protocol: dict) -> str:
    """Short sha256 of the canonical JSON of a protocol.

    The ``resolved`` part (choices made at run time: the C picked on val, iterations, episodes
    actually drawn) is recorded but not hashed: it legitimately differs between encoders run
    under one protocol.
    """
    hashed = {key: value for key, value in protocol.items() if key != "resolved"}
    text = json.dumps(_jsonable(hashed), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", part)


def record_path(results_dir: Path, identity: Identity) -> Path:
    """``results/<evaluator>/<dataset>/<encoder>[__<variant>].json``."""
    name = _safe(identity.encoder) + ("" if identity.variant == "default" else f"__{_safe(identity.variant)}")
    return Path(results_dir) / "records" / _safe(identity.evaluator) / _safe(identity.dataset) / f"{name}.json"


def write_record(record: ResultRecord, results_dir: Path) -> Path:
    """Write atomically (temp file in the same folder, fsync, rename)."""
    path = record_path(results_dir, record.identity)
    write_json_atomic(path, record.to_json())
    return path


def write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=True))


def record_exists(results_dir: Path, identity: Identity) -> bool:
    """True when a readable record for ``identity`` is on disk (a corrupt one counts as absent)."""
    path = record_path(results_dir, identity)
    if not path.is_file():
        return False
    try:
        ResultRecord.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError):
        log.warning("record %s is corrupt; the cell will be recomputed", path)
        return False
    return True


def load_records(results_dir: Path) -> tuple[list[ResultRecord], list[tuple[Path, str]]]:
    """All readable records under ``results_dir/records``, plus (path, reason) for unreadable ones."""
    records, errors = [], []
    root = Path(results_dir) / "records"
    for path in sorted(root.rglob("*.json")) if root.is_dir() else []:
        try:
            records.append(ResultRecord.from_json(json.loads(path.read_text())))
        except (OSError, ValueError, TypeError, KeyError) as error:
            errors.append((path, f"{type(error).__name__}: {error}"))
    return records, errors


def metric(value: float, ci: tuple[float, float] | list[float] | None = None, **more: Any) -> dict[str, Any]:
    """One metric entry: {"value", "ci", ...}."""
    return {"value": float(value), "ci": None if ci is None else [float(ci[0]), float(ci[1])], **more}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return None if math.isnan(value) else value
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj
