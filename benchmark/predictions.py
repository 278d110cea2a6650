"""Per-item prediction side files: the test outcomes behind a record, so two records can be paired.

Next to each record ``<encoder>[__variant].json`` an evaluator may leave
``<encoder>[__variant].predictions.npz`` (written atomically before the record; the record's
``extra["predictions_file"]`` holds its name, sha256, format version and unit, so a side file that
does not belong to the record, e.g. left over from an older run, is detected and refused).

Two units:

* ``image``: per test image: ``ids`` [N] (image ids, the pairing key), ``labels`` [N] int,
  ``probabilities`` [R, N, C] float64 (R replicates: 1 for linear/kNN/fine-tune, one per support
  seed for k-shot linear), and the subgroup columns of the test images (strings, "" = missing).
* ``episode``: per few-shot episode: ``ids`` [E] (episode numbers), ``scores`` [E] float64 (episode
  accuracy), and ``fingerprint``: the sha256 of the episodes' image ids, so two records are paired
  only when they ran the very same episodes.

``fingerprint`` may also identify what replicates saw (k-shot supports). ``meta`` is a small JSON
dict (e.g. ``{"replicates": "support seeds", "k": 10}``). The file is a plain ``np.savez_compressed``
archive (no pickles) with ``format_version`` inside; readers refuse versions they do not know.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.atomic import atomic_write

FORMAT_VERSION = 1
UNITS = ("image", "episode")
SUFFIX = ".predictions.npz"


class PredictionsError(ValueError):
    """A side file is missing, stale, corrupt, or cannot be paired; the message says which and why."""


@dataclass
class Predictions:
    """Test outcomes of one record (see the module docstring for shapes)."""

    unit: str
    ids: np.ndarray
    labels: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    scores: np.ndarray | None = None
    subgroups: dict[str, np.ndarray] = field(default_factory=dict)
    fingerprint: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids).astype(str)
        n = len(self.ids)
        if self.unit not in UNITS:
            raise PredictionsError(f"unit must be one of {UNITS}, got {self.unit!r}")
        if len(set(self.ids.tolist())) != n:
            raise PredictionsError("prediction ids are not unique (each test image or episode needs its own id)")
        if self.unit == "image":
            if self.labels is None or self.probabilities is None:
                raise PredictionsError("image predictions need labels and probabilities")
            self.labels = np.asarray(self.labels).astype(np.int64)
            proba = np.asarray(self.probabilities, dtype=np.float64)
            self.probabilities = proba[None] if proba.ndim == 2 else proba
            if self.labels.shape != (n,) or self.probabilities.ndim != 3 or self.probabilities.shape[1] != n:
                raise PredictionsError(f"image predictions need labels [N] and probabilities [R, N, C] for N={n} ids; "
                                       f"got {self.labels.shape} and {np.shape(self.probabilities)}")
            self.subgroups = {str(k): _subgroup_strings(v, n, k) for k, v in self.subgroups.items()}
        else:
            if self.scores is None:
                raise PredictionsError("episode predictions need scores")
            self.scores = np.asarray(self.scores, dtype=np.float64)
            if self.scores.shape != (n,):
                raise PredictionsError(f"episode scores must be [E={n}], got {self.scores.shape}")

    @property
    def n_classes(self) -> int:
        return int(self.probabilities.shape[2]) if self.probabilities is not None else 0

    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {
            "format_version": np.array(FORMAT_VERSION), "unit": np.array(self.unit), "ids": self.ids,
            "fingerprint": np.array(self.fingerprint), "meta": np.array(json.dumps(self.meta, sort_keys=True)),
            "subgroup_columns": np.array(list(self.subgroups), dtype=str)}
        if self.unit == "image":
            arrays.update(labels=self.labels, probabilities=self.probabilities)
            arrays.update({f"subgroup/{k}": v for k, v in self.subgroups.items()})
        else:
            arrays["scores"] = self.scores
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "side file") -> "Predictions":
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                version = int(archive["format_version"])
                if version != FORMAT_VERSION:
                    raise PredictionsError(f"{source} has format version {version}; this medtransfer reads "
                                           f"version {FORMAT_VERSION} (rerun the cell with --overwrite)")
                unit = str(archive["unit"])
                columns = [str(c) for c in archive["subgroup_columns"]]
                return cls(unit=unit, ids=archive["ids"],
                           labels=archive["labels"] if unit == "image" else None,
                           probabilities=archive["probabilities"] if unit == "image" else None,
                           scores=archive["scores"] if unit == "episode" else None,
                           subgroups={c: archive[f"subgroup/{c}"] for c in columns} if unit == "image" else {},
                           fingerprint=str(archive["fingerprint"]), meta=json.loads(str(archive["meta"])))
        except PredictionsError:
            raise
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise PredictionsError(f"{source} is not a readable predictions file ({type(error).__name__}: {error})") from None


def _subgroup_strings(values: Any, n: int, column: str) -> np.ndarray:
    """Subgroup values as strings ("" = missing/unknown), keyed like ``benchmark.metrics`` keys them."""
    from benchmark.metrics import subgroup_key
    values = np.asarray(values, dtype=object)
    if values.shape != (n,):
        raise PredictionsError(f"subgroup {column!r} has shape {values.shape}, expected ({n},)")
    return np.array([subgroup_key(v) or "" for v in values], dtype=str)


def image_predictions(ids: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
                      subgroups: dict[str, np.ndarray] | None = None, fingerprint: str = "", **meta: Any) -> Predictions:
    """Per-image test predictions: ids [N], labels [N], probabilities [N, C] or [R, N, C]."""
    return Predictions("image", ids, labels=labels, probabilities=probabilities, subgroups=subgroups or {},
                       fingerprint=fingerprint, meta=meta)


def episode_predictions(scores: np.ndarray, fingerprint: str, **meta: Any) -> Predictions:
    """Per-episode scores [E] of episodes identified by ``fingerprint`` (see :func:`fingerprint_of`)."""
    scores = np.asarray(scores, dtype=np.float64)
    return Predictions("episode", np.array([f"e{i:05d}" for i in range(len(scores))]), scores=scores,
                       fingerprint=fingerprint, meta=meta)


def fingerprint_of(*parts: Any) -> str:
    """sha256 of arrays / lists of ids (e.g. the image ids of every episode, in order)."""
    digest = hashlib.sha256()
    for part in parts:
        array = np.asarray(part)
        digest.update(str(array.shape).encode())
        digest.update("\x1f".join(array.astype(str).ravel().tolist()).encode())
    return digest.hexdigest()


def predictions_path(record_file: Path) -> Path:
    """``.../<name>.json`` -> ``.../<name>.predictions.npz``."""
    record_file = Path(record_file)
    return record_file.with_name(record_file.stem + SUFFIX)


def write_predictions(predictions: Predictions, record_file: Path, write: bool = True) -> dict[str, Any]:
    """Serialise (and, with ``write``, atomically write) the side file of ``record_file``.

    Returns the record's ``extra["predictions_file"]`` entry: {"name", "sha256", "format", "unit"}.
    """
    data = predictions.to_bytes()
    path = predictions_path(record_file)
    if write:
        atomic_write(path, lambda handle: handle.write(data))
    return {"name": path.name, "sha256": hashlib.sha256(data).hexdigest(), "format": FORMAT_VERSION,
            "unit": predictions.unit}


def has_predictions(record: Any) -> bool:
    return isinstance(record.extra.get("predictions_file"), dict)


def load_predictions(record: Any, record_file: Path) -> Predictions:
    """The verified side file of ``record`` (stored at ``record_file``); PredictionsError when unusable."""
    entry = record.extra.get("predictions_file")
    label = f"{record.identity.evaluator}/{record.identity.variant} {record.identity.encoder} on {record.identity.dataset}"
    if not isinstance(entry, dict):
        raise PredictionsError(f"{label}: the record keeps no per-item predictions (written before side files, or by "
                               f"an evaluator without them); rerun it with --overwrite to pair it")
    path = Path(record_file).with_name(entry["name"])
    if not path.is_file():
        raise PredictionsError(f"{label}: side file {path} is missing; rerun the cell with --overwrite")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise PredictionsError(f"{label}: side file {path} does not match its record (sha256 differs: stale or "
                               f"edited); rerun the cell with --overwrite")
    return Predictions.from_bytes(data, source=str(path))
