"""Users' own data with no code: a CSV of image paths and labels, or an image folder tree.

``csv``: ``--root labels.csv`` (or a folder holding ``labels.csv``); columns ``image`` (path,
relative to the CSV's folder or absolute) and ``label`` (class name); optional ``group``
(patient/lesion id), ``split`` (train/val/test) and any subgroup columns named with
``--dataset-option subgroups=sex,age``. Column names can be changed with
``--dataset-option image_column=...`` etc.

``folder``: ``--root DIR`` with ``DIR/<class>/<image>`` or ``DIR/{train,val,test}/<class>/<image>``
(official splits then). Each image is its own group.

Without ``--dataset-option name=...`` the dataset's name carries a short digest of its manifest
(``csv-1a2b3c4d``, ``folder-5e6f7a8b``): two different CSVs or folders never share a record, and
the same files on another machine keep the name.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import pandas as pd

from datasets.base import SPLITS, DatasetError, DatasetSpec, FileImageDataset
from datasets.registry import DATASETS

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def _csv_path(root: Path | None) -> Path:
    if root is None:
        raise DatasetError("dataset 'csv' needs --root pointing at a CSV file (or a folder with labels.csv)")
    root = Path(root).expanduser()
    path = root / "labels.csv" if root.is_dir() else root
    if not path.is_file():
        raise DatasetError(f"CSV file not found: {path}. Pass --root path/to/labels.csv")
    return path


def read_label_csv(path: Path, image_column: str = "image", label_column: str = "label",
                   group_column: str = "group", split_column: str = "split") -> pd.DataFrame:
    """Read and validate a label CSV; errors name the file, the problem and the fix."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise DatasetError(f"cannot parse CSV {path}: {error}. Check that it is comma-separated with a header row") from None
    missing = [c for c in (image_column, label_column) if c not in frame.columns]
    if missing:
        raise DatasetError(f"CSV {path} lacks column(s) {missing}; it has {list(frame.columns)}. "
                           f"Rename them or pass --dataset-option image_column=... / label_column=...")
    if frame.empty:
        raise DatasetError(f"CSV {path} has a header but no rows")
    empty = frame.index[(frame[image_column].str.strip() == "") | (frame[label_column].str.strip() == "")]
    if len(empty):
        raise DatasetError(f"CSV {path}: rows {[int(i) + 2 for i in empty[:5]]} have an empty {image_column} or "
                           f"{label_column} (line numbers counting the header as line 1)")
    if split_column in frame.columns:
        bad = sorted(set(frame[split_column]) - set(SPLITS))
        if bad:
            raise DatasetError(f"CSV {path}: column '{split_column}' has values {bad}; use train, val or test")
    return frame


def build_csv_dataset(root: Path | None, options: dict) -> FileImageDataset:
    path = _csv_path(root)
    image_col, label_col = options.get("image_column", "image"), options.get("label_column", "label")
    group_col, split_col = options.get("group_column", "group"), options.get("split_column", "split")
    frame = read_label_csv(path, image_col, label_col, group_col, split_col)
    classes = sorted(frame[label_col].unique())
    base = path.parent
    table = pd.DataFrame({
        "image_id": frame[image_col],
        "path": [str(p if Path(p).is_absolute() else base / p) for p in frame[image_col]],
        "label": frame[label_col].map({c: i for i, c in enumerate(classes)}).astype(int),
        "group": frame[group_col] if group_col in frame.columns else frame[image_col],
    })
    if split_col in frame.columns:
        table["split"] = frame[split_col]
    subgroups = [s for s in str(options.get("subgroups", "")).split(",") if s]
    for column in subgroups:
        if column not in frame.columns:
            raise DatasetError(f"CSV {path} has no subgroup column '{column}'; columns: {list(frame.columns)}")
        table[column] = frame[column]
    return _content_named(lambda name: FileImageDataset(
        name, table, classes, task=f"{len(classes)}-class from {path.name}", subgroup_columns=tuple(subgroups),
        root=base, info={"source_csv": str(path)}), "csv", options)


def build_folder_dataset(root: Path | None, options: dict) -> FileImageDataset:
    if root is None or not Path(root).is_dir():
        raise DatasetError(f"dataset 'folder' needs --root pointing at an existing folder (got {root})")
    root = Path(root).expanduser()
    split_dirs = [root / s for s in SPLITS if (root / s).is_dir()]
    rows = []
    for split_dir in split_dirs or [root]:
        for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            for image in sorted(class_dir.rglob("*")):
                if image.suffix.lower() in IMAGE_SUFFIXES:
                    row = {"image_id": str(image.relative_to(root)), "path": str(image), "class": class_dir.name}
                    if split_dirs:
                        row["split"] = split_dir.name
                    rows.append(row)
    if not rows:
        raise DatasetError(f"no images found under {root}; expected {root}/<class>/<image> or "
                           f"{root}/<train|val|test>/<class>/<image> with suffixes {sorted(IMAGE_SUFFIXES)}")
    table = pd.DataFrame(rows)
    classes = sorted(table["class"].unique())
    table["label"] = table["class"].map({c: i for i, c in enumerate(classes)})
    table["group"] = table["image_id"]
    table = table.drop(columns=["class"])
    return _content_named(lambda name: FileImageDataset(name, table, classes, task=f"{len(classes)}-class image folder",
                                                        root=root), "folder", options)


def _content_named(make: Callable[[str], FileImageDataset], base: str, options: dict) -> FileImageDataset:
    """``make(name)``, named ``options["name"]`` or ``<base>-<manifest sha256[:8]>`` (portable: relative paths, sizes)."""
    if options.get("name"):
        return make(str(options["name"]))
    return make(f"{base}-{make(base).manifest_hash()[:8]}")


DATASETS.add("csv", DatasetSpec(
    name="csv", build=build_csv_dataset, description="your own images listed in a CSV (image, label[, group, split, ...])",
    tasks=("classification",), files_present=lambda root: root is not None and Path(root).exists(),
    source="user", licence="user's"))
DATASETS.add("folder", DatasetSpec(
    name="folder", build=build_folder_dataset, description="your own images in <class>/ (or <split>/<class>/) folders",
    tasks=("classification",), files_present=lambda root: root is not None and Path(root).is_dir(),
    source="user", licence="user's"))
