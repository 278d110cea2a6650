"""Users' own data with no code: a CSV of image paths and labels, or an image folder tree.

``csv``: ``--root labels.csv`` (or a folder holding ``labels.csv``); columns ``image`` (path,
relative to the CSV's folder or absolute) and ``label`` (class name); optional ``group``
(patient/lesion id), ``split`` (train/val/test) and any subgroup columns named with
``--dataset-option subgroups=sex,age``. Column names can be changed with
``--dataset-option image_column=...`` etc.

``folder``: ``--root DIR`` with ``DIR/<class>/<image>`` or ``DIR/{train,val,test}/<class>/<image>``
(official splits then). Each image is its own group. Hidden entries (names starting with ``.``, such
as ``.ipynb_checkpoints/`` and ``.DS_Store``, and ``__MACOSX/``) and files that are not images are
skipped, counted in ``dataset.info["skipped"]`` and logged; ``data check`` shows them.

Without ``--dataset-option name=...`` the dataset's name carries a short digest of its manifest
(``csv-1a2b3c4d``, ``folder-5e6f7a8b``): two different CSVs or folders never share a record, and
the same files on another machine keep the name.

Labels (CSV): an empty or missing-value label (``NaN``, ``nan``, ``NA``, ``N/A``, ``null``, empty) is
an error naming the rows; labels that differ only in case or surrounding spaces (``a``, ``A``, ``a ``)
are an error listing the spellings, unless ``--dataset-option merge_label_variants=true`` merges each
group into its most frequent spelling (logged, and recorded in ``dataset.info["merged_labels"]``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import pandas as pd

from benchmark.options import Bool, Text
from datasets.base import SPLITS, DatasetError, DatasetSpec, FileImageDataset
from datasets.common import check_options, declared_options
from datasets.registry import DATASETS

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# pandas's missing-value spellings (read_csv na_values) except "None", which can be a real class name
MISSING_LABELS = {"", "nan", "-nan", "na", "n/a", "#n/a", "#na", "null", "<na>", "#n/a n/a", "-1.#ind", "1.#ind",
                  "-1.#qnan", "1.#qnan"}
CSV_DEFAULTS = {"image_column": "image", "label_column": "label", "group_column": "group", "split_column": "split",
                "subgroups": "", "merge_label_variants": False}
CSV_SCHEMA = {"image_column": Text(), "label_column": Text(), "group_column": Text(), "split_column": Text(),
              "subgroups": Text(nonempty=False), "merge_label_variants": Bool()}
FOLDER_DEFAULTS: dict = {}
SHOWN_ROWS = 5  # row numbers quoted in an error


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
    empty = frame.index[frame[image_column].str.strip() == ""]
    if len(empty):
        raise DatasetError(f"CSV {path}: rows {_line_numbers(empty)} have an empty {image_column} "
                           f"({len(empty)} row(s); line numbers counting the header as line 1)")
    missing = frame.index[frame[label_column].str.strip().str.lower().isin(MISSING_LABELS)]
    if len(missing):
        values = sorted(set(frame.loc[missing, label_column]))
        raise DatasetError(f"CSV {path}: rows {_line_numbers(missing)} have an empty or missing {label_column} "
                           f"({len(missing)} row(s), values {values}; line numbers counting the header as line 1). "
                           f"Give every image a class or remove its row")
    if split_column in frame.columns:
        bad = sorted(set(frame[split_column]) - set(SPLITS))
        if bad:
            raise DatasetError(f"CSV {path}: column '{split_column}' has values {bad}; use train, val or test")
    return frame


def _line_numbers(index: pd.Index) -> str:
    """The first few CSV line numbers of 0-based data rows ``index`` (header = line 1), ``...`` when more."""
    shown = [int(i) + 2 for i in index[:SHOWN_ROWS]]
    return f"{shown}{' ...' if len(index) > SHOWN_ROWS else ''}"


def unify_label_spellings(labels: pd.Series, path: Path, merge: bool) -> tuple[pd.Series, dict[str, list[str]]]:
    """Labels whose spellings differ only in case or surrounding spaces: an error (``merge=False``), or
    each group mapped to its most frequent spelling (ties: one without surrounding spaces, then the first
    in sorted order). Returns the labels
    and {kept spelling: merged spellings}."""
    counts = labels.value_counts()
    groups: dict[str, list[str]] = {}
    for spelling in sorted(counts.index):
        groups.setdefault(spelling.strip().casefold(), []).append(spelling)
    variants = {key: spellings for key, spellings in groups.items() if len(spellings) > 1}
    if not variants:
        return labels, {}
    shown = "; ".join(" / ".join(f"{s!r} ({counts[s]})" for s in spellings) for spellings in variants.values())
    if not merge:
        raise DatasetError(f"CSV {path}: labels differ only in case or surrounding spaces: {shown}. Fix the spelling "
                           f"in the CSV, or merge each group into its most frequent spelling with "
                           f"--dataset-option merge_label_variants=true")
    mapping, merged = {}, {}
    for spellings in variants.values():
        kept = max(spellings, key=lambda s: (counts[s], s == s.strip()))  # ties: unpadded, then first sorted
        merged[kept] = [s for s in spellings if s != kept]
        mapping.update({s: kept for s in spellings})
    log.warning("CSV %s: merged label spellings that differ only in case or spaces: %s", path, shown)
    return labels.map(lambda s: mapping.get(s, s)), merged


def build_csv_dataset(root: Path | None, options: dict) -> FileImageDataset:
    path = _csv_path(root)
    check_options("csv", options, CSV_DEFAULTS, common=())
    settings = declared_options("csv", options, CSV_DEFAULTS, CSV_SCHEMA)
    image_col, label_col = settings["image_column"], settings["label_column"]
    group_col, split_col = settings["group_column"], settings["split_column"]
    frame = read_label_csv(path, image_col, label_col, group_col, split_col)
    frame[label_col], merged = unify_label_spellings(frame[label_col], path, settings["merge_label_variants"])
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
    subgroups = [s.strip() for s in settings["subgroups"].split(",") if s.strip()]
    for column in subgroups:
        if column not in frame.columns:
            raise DatasetError(f"CSV {path} has no subgroup column '{column}'; columns: {list(frame.columns)}")
        table[column] = frame[column]
    info = {"source_csv": str(path), **({"merged_labels": merged} if merged else {})}
    return _content_named(lambda name: FileImageDataset(
        name, table, classes, task=f"{len(classes)}-class from {path.name}", subgroup_columns=tuple(subgroups),
        root=base, info=info), "csv", options)


def _hidden(name: str) -> bool:
    """Dot-files and dot-folders (``.ipynb_checkpoints``, ``.DS_Store``, ``._x.jpg``) and macOS ``__MACOSX``."""
    return name.startswith(".") or name == "__MACOSX"


def _folder_entries(root: Path) -> tuple[list[dict], dict]:
    """Image rows of a ``<class>/`` or ``<split>/<class>/`` tree, and what was skipped (counts + examples)."""
    split_dirs = [root / s for s in SPLITS if (root / s).is_dir()]
    rows: list[dict] = []
    skipped: dict = {"hidden": 0, "not_image": 0, "examples": []}

    def skip(kind: str, path: Path) -> None:
        skipped[kind] += 1
        if len(skipped["examples"]) < SHOWN_ROWS:
            skipped["examples"].append(str(path.relative_to(root)))

    for split_dir in split_dirs or [root]:
        for entry in sorted(split_dir.iterdir()):
            if _hidden(entry.name):
                skip("hidden", entry)
            elif not entry.is_dir():
                skip("not_image", entry)  # a file beside the class folders (README, labels.txt)
            else:
                for image in sorted(entry.rglob("*")):
                    relative = image.relative_to(entry)
                    if any(_hidden(part) for part in relative.parts):
                        if not any(_hidden(part) for part in relative.parts[:-1]):  # count a hidden folder once
                            skip("hidden", image)
                    elif image.is_file() and image.suffix.lower() not in IMAGE_SUFFIXES:
                        skip("not_image", image)
                    elif image.is_file():
                        row = {"image_id": str(image.relative_to(root)), "path": str(image), "class": entry.name}
                        if split_dirs:
                            row["split"] = split_dir.name
                        rows.append(row)
    skipped["total"] = skipped["hidden"] + skipped["not_image"]
    return rows, skipped


def build_folder_dataset(root: Path | None, options: dict) -> FileImageDataset:
    if root is None or not Path(root).is_dir():
        raise DatasetError(f"dataset 'folder' needs --root pointing at an existing folder (got {root})")
    check_options("folder", options, FOLDER_DEFAULTS, common=())
    root = Path(root).expanduser()
    rows, skipped = _folder_entries(root)
    if skipped["total"]:
        log.warning("folder %s: skipped %d hidden entries and %d files that are not images (%s), e.g. %s", root,
                    skipped["hidden"], skipped["not_image"], ", ".join(sorted(IMAGE_SUFFIXES)), skipped["examples"])
    if not rows:
        raise DatasetError(f"no images found under {root}; expected {root}/<class>/<image> or "
                           f"{root}/<train|val|test>/<class>/<image> with suffixes {sorted(IMAGE_SUFFIXES)}")
    table = pd.DataFrame(rows)
    classes = sorted(table["class"].unique())
    table["label"] = table["class"].map({c: i for i, c in enumerate(classes)})
    table["group"] = table["image_id"]
    table = table.drop(columns=["class"])
    info = {"skipped": skipped} if skipped["total"] else {}
    return _content_named(lambda name: FileImageDataset(name, table, classes, task=f"{len(classes)}-class image folder",
                                                        root=root, info=info), "folder", options)


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
