"""Result records: one JSON file per (encoder, dataset, evaluator, variant), written atomically.

A record holds identity, schema version, metrics (value, CI, per-seed values), the primary
metric, the resolved protocol and its hash, and provenance. A killed run loses at most the cell
in flight; a rerun skips a cell only when its record was made under the same protocol (the
runner compares protocol hashes). Records are validated strictly when read: a corrupt or foreign
file is a :class:`RecordError` naming the broken field, never a half-read record.
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
_REQUIRED = ("identity", "metrics", "primary_metric", "protocol", "provenance")
_OPTIONAL = ("subgroups", "extra", "schema_version", "protocol_hash")


class RecordError(ValueError):
    """A record file that is not a valid result record (corrupt, truncated, foreign or another schema)."""


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
        return jsonable(asdict(self))

    @classmethod
    def from_json(cls, data: Any) -> "ResultRecord":
        """Validate ``data`` (parsed JSON) strictly and build the record; :class:`RecordError` says what is wrong."""
        _validate(data)
        data = dict(data)
        data["identity"] = Identity(**data["identity"])
        data.pop("protocol_hash", None)  # always recomputed from the protocol itself
        return cls(**data)


def _validate(data: Any) -> None:
    if not isinstance(data, dict):
        raise RecordError(f"a record is a JSON object, this file holds a {type(data).__name__}")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise RecordError(f"schema version {data.get('schema_version')!r} is not {SCHEMA_VERSION}")
    missing = [key for key in _REQUIRED if key not in data]
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if missing or unknown:
        raise RecordError(f"missing keys {missing}" if missing else f"unknown keys {unknown}")
    identity = data["identity"]
    if not isinstance(identity, dict) or set(identity) - {"encoder", "dataset", "evaluator", "variant"} \
            or not all(isinstance(identity.get(k), str) and identity.get(k) for k in ("encoder", "dataset", "evaluator")) \
            or not isinstance(identity.get("variant", "default"), str):
        raise RecordError(f"identity must be {{encoder, dataset, evaluator[, variant]}} strings, got {identity!r:.120}")
    for key in ("protocol", "provenance", "subgroups", "extra"):
        if not isinstance(data.get(key, {}), dict):
            raise RecordError(f"'{key}' must be an object, got {type(data[key]).__name__}")
    metrics = data["metrics"]
    if not isinstance(metrics, dict) or not metrics:
        raise RecordError("'metrics' must be a non-empty object of name -> {value, ci}")
    for name, entry in metrics.items():
        if not isinstance(entry, dict) or "value" not in entry:
            raise RecordError(f"metric '{name}' must be an object with a 'value', got {entry!r:.60}")
        if not _number_or_null(entry["value"]) or not _number_or_null(entry.get("sd")):
            raise RecordError(f"metric '{name}': value and sd must be numbers or null")
        ci = entry.get("ci")
        if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(_number_or_null(v) for v in ci)):
            raise RecordError(f"metric '{name}': ci must be null or [low, high], got {ci!r:.60}")
    if not isinstance(data["primary_metric"], str) or data["primary_metric"] not in metrics:
        raise RecordError(f"primary metric {data['primary_metric']!r:.60} is not among the metrics")
    detail = data.get("extra", {}).get("detail_metrics")
    if detail is not None and not (isinstance(detail, list) and all(isinstance(d, str) for d in detail)):
        raise RecordError("extra.detail_metrics must be a list of metric names")


def _number_or_null(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def read_record(path: Path) -> ResultRecord:
    """The record at ``path``; :class:`RecordError` when it cannot be read or is not a valid record."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:  # ValueError: bad JSON or bad UTF-8
        raise RecordError(f"cannot read it as JSON ({type(error).__name__}: {error})") from None
    try:
        return ResultRecord.from_json(data)
    except RecordError:
        raise
    except (TypeError, ValueError, KeyError) as error:  # e.g. a primary metric check in __post_init__
        raise RecordError(f"{type(error).__name__}: {error}") from None


def protocol_hash(protocol: dict) -> str:
    """Short sha256 of the canonical JSON of a protocol.

    The ``resolved`` part (choices made at run time: the C picked on val, iterations, episodes
    actually drawn) is recorded but not hashed: it legitimately differs between encoders run
    under one protocol.
    """
    hashed = {key: value for key, value in protocol.items() if key != "resolved"}
    text = json.dumps(jsonable(hashed), sort_keys=True)
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
    """True when a valid record for ``identity`` is on disk (a corrupt one counts as absent)."""
    path = record_path(results_dir, identity)
    if not path.is_file():
        return False
    try:
        read_record(path)
    except RecordError as error:
        log.warning("record %s is unreadable (%s); the cell will be recomputed", path, error)
        return False
    return True


def load_records(results_dir: Path) -> tuple[list[ResultRecord], list[tuple[Path, str]]]:
    """All valid records under ``results_dir/records``, plus (path, reason) for the others (reported, skipped)."""
    records, errors = [], []
    root = Path(results_dir) / "records"
    for path in sorted(root.rglob("*.json")) if root.is_dir() else []:
        try:
            records.append(read_record(path))
        except RecordError as error:
            errors.append((path, str(error)))
    return records, errors


def protocol_differences(recorded: dict, planned: dict, limit: int = 4) -> list[str]:
    """``field: recorded -> planned`` for each hashed protocol field that differs (dotted paths, ``resolved`` ignored)."""
    out: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if not where and key == "resolved":
                    continue
                walk(a.get(key, _ABSENT), b.get(key, _ABSENT), f"{where}.{key}" if where else str(key))
        elif _canonical(a) != _canonical(b):
            out.append(f"{where}: {_short(a)} -> {_short(b)}")
    walk(jsonable(recorded), jsonable(planned), "")
    return out[:limit] + ([f"{len(out) - limit} more"] if len(out) > limit else [])


_ABSENT = object()


def _canonical(value: Any) -> str:  # text, so that key order does not matter and absent differs from null
    return "<absent>" if value is _ABSENT else json.dumps(value, sort_keys=True)


def _short(value: Any) -> str:
    text = _canonical(value)
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{32,}", value):
        text = value[:12]
    return text if len(text) <= 40 else text[:37] + "..."


def metric(value: float, ci: tuple[float, float] | list[float] | None = None, **more: Any) -> dict[str, Any]:
    """One metric entry: {"value", "ci", ...}."""
    return {"value": float(value), "ci": None if ci is None else [float(ci[0]), float(ci[1])], **more}


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types (numpy scalars and arrays, tuples, paths; NaN -> None)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
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
