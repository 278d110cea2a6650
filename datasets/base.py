"""The Dataset contract: images with labels, group ids, subgroup metadata and optional official splits.

A dataset is a table (one row per image) plus a way to load image ``i``. Required columns:
``image_id`` (unique str), ``label`` (int index into ``classes``), ``group`` (patient or lesion
id; the image id when the source has none). Optional: ``split`` (official "train"/"val"/"test"),
and the columns named in ``subgroup_columns`` (e.g. ``fitzpatrick``, ``sex``, ``age``, ``site``).

Multi-label datasets (several binary findings per image, e.g. ChestMNIST) pass ``label_matrix``
(0/1 [N, L], one column per name in ``classes``) instead of a ``label`` column. Then
``is_multilabel`` is True, ``targets`` is the matrix, and ``labels`` (one class per image) raises a
:class:`DatasetError`, so code that needs a single class refuses them with a clear message. Every
single-label dataset is unchanged (``targets`` is ``labels``).
"""
from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """A dataset that cannot be used as given; the message says what is wrong and how to fix it."""


class UnreadableImageError(DatasetError):
    """An image file that is missing, truncated or not an image."""


class ImageDataset:
    """Base class. Subclasses implement :meth:`_load` and may override :meth:`_fingerprint_rows`."""

    def __init__(self, name: str, table: pd.DataFrame, classes: list[str], *, task: str = "",
                 subgroup_columns: tuple[str, ...] = (), root: Path | None = None,
                 info: dict[str, Any] | None = None, label_matrix: np.ndarray | None = None):
        missing = {"image_id", "group"} - set(table.columns) | ({"label"} - set(table.columns) if label_matrix is None
                                                                 else set())
        if missing:
            raise DatasetError(f"dataset '{name}' table lacks columns {sorted(missing)}")
        table = table.reset_index(drop=True)
        if table["image_id"].duplicated().any():
            dupes = table.loc[table["image_id"].duplicated(), "image_id"].head(5).tolist()
            raise DatasetError(f"dataset '{name}' has duplicate image ids, e.g. {dupes}; each image must appear once")
        if len(table) == 0:
            raise DatasetError(f"dataset '{name}' has no images; check the root folder and the CSV")
        if label_matrix is None:
            labels = table["label"].to_numpy()
            if labels.min() < 0 or labels.max() >= len(classes):
                raise DatasetError(f"dataset '{name}' has labels outside 0..{len(classes) - 1}")
        else:
            label_matrix = _checked_label_matrix(name, label_matrix, len(table), classes)
        self.label_matrix = label_matrix
        self.name = name
        self.table = table
        self.classes = list(classes)
        self.task = task
        self.subgroup_columns = tuple(c for c in subgroup_columns if c in table.columns)
        self.root = root
        self.info = dict(info or {})
        self._manifest: str | None = None
        self._content: str | None = None

    # -- contract -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.table)

    @property
    def is_multilabel(self) -> bool:
        return self.label_matrix is not None

    @property
    def labels(self) -> np.ndarray:
        """int64 [N] class indices (single-label datasets only)."""
        if self.label_matrix is not None:
            raise DatasetError(
                f"dataset '{self.name}' is multi-label ({self.label_matrix.shape[1]} binary findings per image) and "
                f"this needs one class per image. Use an evaluator that supports multi-label data (knn, linear, "
                f"finetune, medmnist-v2), or pick one finding as a binary task with --dataset-option task=<finding>"
                f" (one of {', '.join(self.classes)})")
        return self.table["label"].to_numpy(dtype=np.int64)

    @property
    def targets(self) -> np.ndarray:
        """What a model is trained on: ``labels`` int64 [N], or the multi-label matrix uint8 [N, L]."""
        return self.label_matrix if self.label_matrix is not None else self.labels

    @property
    def groups(self) -> np.ndarray:
        return self.table["group"].astype(str).to_numpy()

    @property
    def ids(self) -> np.ndarray:
        return self.table["image_id"].astype(str).to_numpy()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_official_splits(self) -> bool:
        return "split" in self.table.columns and self.table["split"].notna().all()

    def load_image(self, index: int) -> Image.Image:
        """RGB PIL image of row ``index``; raises :class:`UnreadableImageError` with the reason."""
        return self._load(index)

    def _load(self, index: int) -> Image.Image:
        raise NotImplementedError

    def lesion_box(self, index: int) -> tuple[float, float, float, float] | None:
        """Lesion box (x0, y0, x1, y1) in pixel edges of ``load_image(index)`` (x1, y1 exclusive), or None."""
        return None

    def subgroups(self, indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Subgroup columns as arrays (restricted to ``indices``)."""
        table = self.table if indices is None else self.table.iloc[indices]
        return {column: table[column].to_numpy() for column in self.subgroup_columns}

    def class_counts(self) -> dict[str, int]:
        """Images per class (multi-label: positives per finding)."""
        counts = (self.label_matrix.sum(axis=0) if self.label_matrix is not None
                  else np.bincount(self.labels, minlength=self.num_classes))
        return {name: int(count) for name, count in zip(self.classes, counts)}

    def manifest_hash(self) -> str:
        """Portable sha256 over ids, labels, groups, official splits and image fingerprints.

        The same files copied to another machine give the same hash (it enters protocol hashes).
        """
        if self._manifest is None:
            self._manifest = self._hash(strict=False)
        return self._manifest

    def content_hash(self) -> str:
        """Like :meth:`manifest_hash` but also sensitive to file modification times (feature cache key)."""
        if self._content is None:
            self._content = self._hash(strict=True)
        return self._content

    def _hash(self, strict: bool) -> str:
        digest = hashlib.sha256()
        digest.update(repr((self.name, self.classes)).encode())
        columns = [c for c in ("image_id", "label", "group", "split") if c in self.table.columns]
        digest.update(self.table[columns].astype(str).to_csv(index=False).encode())
        if self.label_matrix is not None:
            digest.update(hashlib.sha256(np.ascontiguousarray(self.label_matrix).tobytes()).digest())
        for fingerprint in self._fingerprint_rows(strict):
            digest.update(fingerprint)
        return digest.hexdigest()

    def _fingerprint_rows(self, strict: bool):
        """Yield bytes that change when an image changes (override per storage kind)."""
        return iter(())


class FileImageDataset(ImageDataset):
    """Images stored as files; ``table['path']`` holds absolute paths."""

    def __init__(self, name: str, table: pd.DataFrame, classes: list[str], **kwargs):
        if "path" not in table.columns:
            raise DatasetError(f"dataset '{name}' table needs a 'path' column")
        super().__init__(name, table, classes, **kwargs)
        self._paths = self.table["path"].astype(str).tolist()

    def path(self, index: int) -> Path:
        return Path(self._paths[index])

    def _load(self, index: int) -> Image.Image:
        return read_image(self.path(index))

    def _fingerprint_rows(self, strict: bool):
        for path in self._paths:
            shown = path if strict or self.root is None else _relative(path, self.root)
            try:
                stat = Path(path).stat()
                yield f"{shown}|{stat.st_size}|{stat.st_mtime_ns if strict else ''}\n".encode()
            except OSError:
                yield f"{shown}|missing\n".encode()

    def missing_files(self) -> list[str]:
        return [p for p in self._paths if not Path(p).is_file()]


class ArrayImageDataset(ImageDataset):
    """Images held in a uint8 array [N, H, W] or [N, H, W, 3] (synthetic data, MedMNIST)."""

    def __init__(self, name: str, table: pd.DataFrame, classes: list[str], images: np.ndarray, **kwargs):
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(table):
            raise DatasetError(f"dataset '{name}': images must be uint8 [N, H, W(, 3)] with one row per image")
        super().__init__(name, table, classes, **kwargs)
        self.images = images

    def _load(self, index: int) -> Image.Image:
        array = self.images[index]
        image = Image.fromarray(array if array.ndim == 3 else array, mode=None)
        return image.convert("RGB")

    def _fingerprint_rows(self, strict: bool):
        yield hashlib.sha256(np.ascontiguousarray(self.images).tobytes()).digest()


def _checked_label_matrix(name: str, matrix: np.ndarray, n_rows: int, classes: list[str]) -> np.ndarray:
    """A multi-label matrix as uint8 [N, L]; wrong shapes or values other than 0/1 are a DatasetError."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape != (n_rows, len(classes)):
        raise DatasetError(f"dataset '{name}': the label matrix has shape {matrix.shape}, expected ({n_rows}, "
                           f"{len(classes)}) (one row per image, one column per finding)")
    if matrix.size and not np.isin(matrix, (0, 1)).all():
        raise DatasetError(f"dataset '{name}': the label matrix must hold only 0 and 1 (multi-label findings)")
    return matrix.astype(np.uint8)


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return Path(path).name


def read_image(path: Path) -> Image.Image:
    """Open an image fully (so truncation is caught here) and convert to RGB."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise UnreadableImageError(f"image file not found: {path}. Check the dataset root (--root) "
                                   f"and that the download is complete (python cli.py data check).") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UnreadableImageError(f"cannot read image {path}: {error}. The file is truncated or not an "
                                   f"image; re-download it or remove its row.") from None


@dataclass
class DatasetSpec:
    """Registry entry: metadata plus ``build(root, options)`` returning an :class:`ImageDataset`."""

    name: str
    build: Callable[[Path | None, dict], ImageDataset]
    description: str = ""
    tasks: tuple[str, ...] = ()
    needs_root: bool = True
    files_present: Callable[[Path | None], bool] | None = None
    source: str = ""
    licence: str = ""
    aliases: tuple[str, ...] = ()
    default_in_benchmark: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def present(self, root: Path | None) -> bool:
        if not self.needs_root:
            return True
        if root is None or self.files_present is None:
            return False
        return bool(self.files_present(root))


def validate_dataset_spec(obj: object) -> None:
    if not isinstance(obj, DatasetSpec):
        raise TypeError(f"a dataset registration must be a DatasetSpec, got {type(obj).__name__}")
