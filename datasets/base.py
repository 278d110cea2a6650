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
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from datasets.intensity import DEFAULT_WINDOW, array_to_rgb8, parse_window, to_rgb8, window_label

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MAX_PIXELS_ENV = "MEDTRANSFER_MAX_IMAGE_PIXELS"  # PIL's decompression-bomb limit; 0 = no limit
# Bumped when decoding changes what load_image returns for the same file (enters content hashes, so
# cached features of file datasets are re-extracted): 2 = 16-bit/float images scaled, not clipped.
DECODE_VERSION = 2
IMAGE_OPTIONS = ("intensity_window",)  # options every dataset accepts (handled by DatasetSpec.build)


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
        self.intensity_window: str | tuple[float, float] = DEFAULT_WINDOW  # datasets/intensity.py
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

    def set_intensity_window(self, window: str | tuple[float, float], rename: bool = True) -> None:
        """Scale >8-bit images by ``window`` (``minmax``, ``dtype`` or ``(lo, hi)``); a non-default window
        is part of the dataset's name (records of two windows never mix) and of ``info``."""
        self.intensity_window = window
        self.info["intensity_window"] = window_label(window)
        if rename and window != DEFAULT_WINDOW:
            self.name = f"{self.name}-window{window_label(window)}"
        self._manifest = self._content = None

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
        if strict:  # what decoding returns for the same bytes (feature-cache key only; protocols stay portable)
            digest.update(f"decode-v{DECODE_VERSION}|{window_label(self.intensity_window)}".encode())
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
        return read_image(self.path(index), self.intensity_window)

    def _fingerprint_rows(self, strict: bool):
        for path in self._paths:
            shown = path if strict or self.root is None else _relative(path, self.root)
            try:
                stat = os.stat(path)
                yield f"{shown}|{stat.st_size}|{stat.st_mtime_ns if strict else ''}\n".encode()
            except OSError:
                yield f"{shown}|missing\n".encode()

    def missing_files(self) -> list[str]:
        return [p for p in self._paths if not Path(p).is_file()]


class ArrayImageDataset(ImageDataset):
    """Images held in an array [N, H, W] or [N, H, W, 3] (synthetic data, MedMNIST): uint8, or uint16 /
    int / float scaled to 8 bits per image by ``intensity_window`` (datasets/intensity.py)."""

    def __init__(self, name: str, table: pd.DataFrame, classes: list[str], images: np.ndarray, **kwargs):
        real = np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)
        if not real or images.dtype == np.bool_ or images.ndim not in (3, 4) or len(images) != len(table) or (
                images.ndim == 4 and images.shape[-1] != 3):
            raise DatasetError(f"dataset '{name}': images must be an integer or float array [N, H, W] or "
                               f"[N, H, W, 3] with one row per image, got {images.dtype} {list(images.shape)}")
        super().__init__(name, table, classes, **kwargs)
        self.images = images

    def __getstate__(self) -> dict:
        """Pickled state. To a DataLoader worker being started (multiprocessing's pickler, while a
        process is spawned) an array of >= ``SHARE_BYTES`` travels as a shared-memory handle, not as
        a copy of its bytes: the images move into shared memory once (this object then reads them
        there, same values) and every later worker maps them (76 MB synthderm: ~0.2 s per worker
        before, docs/speed.md)."""
        state = self.__dict__.copy()
        state.pop("_shared", None)
        if _pickling_for_child_process() and self.images.nbytes >= SHARE_BYTES:
            shared = self._shared_images()
            if shared is not None:
                state["images"] = shared
        return state

    def __setstate__(self, state: dict) -> None:
        images = state["images"]
        if not isinstance(images, np.ndarray):  # a shared tensor (see __getstate__): its numpy view
            state = {**state, "images": images.numpy()}
        self.__dict__.update(state)

    def _shared_images(self):
        """The images as a CPU tensor in shared memory (made once), or None where torch cannot hold
        them (e.g. a big-endian array): those are pickled as copies, as before."""
        shared = getattr(self, "_shared", None)
        if shared is None:
            import torch
            try:
                shared = torch.from_numpy(np.ascontiguousarray(self.images)).share_memory_()
            except (TypeError, ValueError, RuntimeError) as error:  # a dtype or byte order torch lacks: a copy
                log.debug("dataset '%s': images stay unshared (%s)", self.name, error)
                return None
            self.images = shared.numpy()  # read from shared memory from now on: one copy, not two
            self._shared = shared
        return shared

    def _load(self, index: int) -> Image.Image:
        try:
            return array_to_rgb8(self.images[index], self.intensity_window)
        except ValueError as error:
            raise UnreadableImageError(f"dataset '{self.name}': image {index} ({self.ids[index]}): {error}") from None

    def _fingerprint_rows(self, strict: bool):
        yield hashlib.sha256(np.ascontiguousarray(self.images).tobytes()).digest()


SHARE_BYTES = 1 << 20  # in-memory image arrays at least this large reach worker processes through shared memory


def _pickling_for_child_process() -> bool:
    """True while multiprocessing pickles the state of a process it is starting (forkserver, spawn)."""
    from multiprocessing import context
    return context.get_spawning_popen() is not None


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
    """``path`` below ``root`` (lexically, as ``Path.relative_to``), else its file name; string
    operations only: this runs once per image and pathlib costs ~100 us a call."""
    prefix = str(root).rstrip(os.sep) + os.sep
    return path[len(prefix):] if path.startswith(prefix) else os.path.basename(path)


def open_image(path: Path) -> Image.Image:
    """The image at ``path`` fully decoded (so truncation is caught here), in its stored mode.

    Raises :class:`UnreadableImageError` for a missing, truncated or non-image file and for an image
    above PIL's decompression-bomb limit (raise it with ``$MEDTRANSFER_MAX_IMAGE_PIXELS``).
    """
    _apply_pixel_limit()
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except FileNotFoundError:
        raise UnreadableImageError(f"image file not found: {path}. Check the dataset root (--root) "
                                   f"and that the download is complete (python cli.py data check).") from None
    except Image.DecompressionBombError as error:
        raise UnreadableImageError(
            f"image {path} is too large to decode safely: {error} If the file is genuine, allow it with "
            f"{MAX_PIXELS_ENV}=<pixels> (at least the image's pixel count; 0 = no limit), or downscale it.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UnreadableImageError(f"cannot read image {path}: {error}. The file is truncated or not an "
                                   f"image; re-download it or remove its row.") from None


def read_image(path: Path, window: str | tuple[float, float] = DEFAULT_WINDOW) -> Image.Image:
    """The image at ``path`` as an 8-bit RGB PIL image; 16-bit and float images are scaled by ``window``
    (datasets/intensity.py: per-image min..max by default), never clipped."""
    image = open_image(path)
    try:
        return to_rgb8(image, window)
    except ValueError as error:
        raise UnreadableImageError(f"cannot use image {path} ({image.mode}): {error}; fix or remove the file") from None


def _apply_pixel_limit() -> None:
    """``$MEDTRANSFER_MAX_IMAGE_PIXELS`` (read at every call, so DataLoader workers see it) -> PIL's limit."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return
    try:
        pixels = int(value)
    except ValueError:
        raise DatasetError(f"{MAX_PIXELS_ENV} must be an integer number of pixels (0 = no limit), got {value!r}") from None
    Image.MAX_IMAGE_PIXELS = pixels if pixels > 0 else None


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

    def __post_init__(self) -> None:
        if not getattr(self.build, "handles_image_options", False):
            self.build = _with_image_options(self.name, self.build)

    def present(self, root: Path | None) -> bool:
        if not self.needs_root:
            return True
        if root is None or self.files_present is None:
            return False
        return bool(self.files_present(root))


def _with_image_options(name: str, build: Callable[[Path | None, dict], ImageDataset]):
    """``build`` that also takes the options every dataset has (``intensity_window``), so loaders and
    plugins never see them."""
    def build_with_image_options(root: Path | None, options: dict) -> ImageDataset:
        options = dict(options or {})
        raw = options.pop("intensity_window", None)
        try:
            window = parse_window(raw)
        except ValueError as error:
            raise DatasetError(f"dataset '{name}': {error}") from None
        dataset = build(root, options)
        if raw is not None:
            dataset.set_intensity_window(window, rename="name" not in options)
        return dataset
    build_with_image_options.handles_image_options = True
    return build_with_image_options


def validate_dataset_spec(obj: object) -> None:
    if not isinstance(obj, DatasetSpec):
        raise TypeError(f"a dataset registration must be a DatasetSpec, got {type(obj).__name__}")
