"""derm7pt (Kawahara et al. 2019, the EDRA atlas): 1,011 cases, each with a clinical and a dermoscopic image.

Layout (``--root DIR``; ``DIR`` may be ``release_v0`` or the folder that holds it)::

    DIR/meta/meta.csv                 case_num,diagnosis,seven_point_score,pigment_network,streaks,...,
                                      location,sex,clinic,derm,...
    DIR/meta/train_indexes.csv        column ``indexes``: 0-based rows of meta.csv (also valid_, test_)
    DIR/images/NEL/Nel026.jpg         paths as in the ``clinic`` / ``derm`` columns (matched case-insensitively)

Options: ``variant=derm`` (dermoscopic, default) or ``clinic``; ``task=melanoma`` (default: any
melanoma diagnosis vs the rest, as CHAVES's 3.2.* codes) or ``diagnosis`` (the release's 5 grouped
classes BCC, NEV, MEL, MISC, SK, as ``ArgenzianoDatasetGroupInfrequent``). Group: ``case_num``.
Subgroups: ``sex``, ``site`` (``location``).

Splits: with the three index CSVs present (``splits=official``, the default) they are used as given.
meta.csv rows in no index CSV are excluded (``unindexed=exclude``, the default; their number is
``info["unindexed_rows"]``, recorded with every result, and a warning names it) or refused
(``unindexed=error``); they never make the loader switch to generated splits. Without index CSVs,
or with ``splits=generated`` (every row, index CSVs ignored), splits are generated (grouped by case,
stratified, seeded, saved) and ``info["split_source"]`` says so.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from datasets.base import DatasetError, DatasetSpec, FileImageDataset
from datasets.common import (ImageIndex, built_name, check_options, choose_option, choose_task, clean_values, encode,
                             low_data_settings, primary_metric_for, read_csv, resolve_images, resolve_root)
from datasets.registry import DATASETS

log = logging.getLogger(__name__)

NAME = "derm7pt"
TASKS = {"melanoma": "binary: any melanoma diagnosis (1) vs the rest (0)",
         "diagnosis": "5 grouped diagnoses BCC, NEV, MEL, MISC, SK (derm7pt's grouping)"}
VARIANTS = {"derm": "derm", "dermoscopic": "derm", "clinic": "clinic", "clinical": "clinic"}
VARIANT_CHOICES = {"derm": "dermoscopic images (default)", "dermoscopic": "same as derm",
                   "clinic": "clinical photographs", "clinical": "same as clinic"}
DIAGNOSIS_CLASSES = ["BCC", "NEV", "MEL", "MISC", "SK"]
_NEVI = ("nevus", "blue nevus", "clark nevus", "combined nevus", "congenital nevus", "dermal nevus",
         "recurrent nevus", "reed or spitz nevus")
_MISC = ("dermatofibroma", "lentigo", "melanosis", "miscellaneous", "vascular lesion")
SPLIT_FILES = {"train": "train_indexes.csv", "val": "valid_indexes.csv", "test": "test_indexes.csv"}
SPLIT_CHOICES = {"official": "the release's meta/{train,valid,test}_indexes.csv when present (default)",
                 "generated": "ignore the index CSVs: every meta.csv row, generated grouped stratified splits"}
UNINDEXED_CHOICES = {"exclude": "drop meta.csv rows that no index CSV lists, and count them (default)",
                     "error": "refuse a release whose index CSVs do not cover every meta.csv row"}


def grouped_diagnosis(diagnosis: str) -> str | None:
    """The derm7pt 5-class group of a diagnosis string (None when unknown)."""
    text = diagnosis.strip().lower()
    if text.startswith("melanoma"):
        return "MEL"
    if text == "basal cell carcinoma":
        return "BCC"
    if text == "seborrheic keratosis":
        return "SK"
    if text in _NEVI:
        return "NEV"
    if text in _MISC:
        return "MISC"
    return None


def release_dir(root: Path) -> Path:
    for candidate in (root, root / "release_v0", root / "derm7pt" / "release_v0"):
        if (candidate / "meta" / "meta.csv").is_file():
            return candidate
    raise DatasetError(f"dataset '{NAME}': meta/meta.csv not found under {root} (or {root}/release_v0); --root "
                       f"must be the unpacked derm7pt release folder (release_v0)")


def build_derm7pt(root: Path | None, options: dict) -> FileImageDataset:
    check_options(NAME, options, ("variant", "splits", "unindexed"))
    task = choose_task(NAME, options, TASKS)
    column = VARIANTS[choose_option(NAME, options, "variant", VARIANT_CHOICES)]
    split_choice = choose_option(NAME, options, "splits", SPLIT_CHOICES)
    unindexed = choose_option(NAME, options, "unindexed", UNINDEXED_CHOICES)
    base = release_dir(resolve_root(NAME, root, "derm7pt", "release_v0/meta/meta.csv"))
    meta_path = base / "meta" / "meta.csv"
    frame = read_csv(meta_path, ("diagnosis", "clinic", "derm"), NAME)
    frame["row"] = np.arange(len(frame))
    groups = frame["case_num"] if "case_num" in frame.columns else frame["row"].astype(str)
    frame["group"] = groups.astype(str)
    rows_in_meta = len(frame)
    frame, split_source = _select_splits(frame, base, split_choice, unindexed)
    groups5 = frame["diagnosis"].map(grouped_diagnosis)
    unknown = sorted(set(frame.loc[groups5.isna(), "diagnosis"]))
    if unknown:
        raise DatasetError(f"dataset '{NAME}': {meta_path.name} has diagnoses {unknown[:5]} that are not in the "
                           f"derm7pt label set")
    if task == "melanoma":
        classes, labels = ["other", "melanoma"], (groups5 == "MEL").astype(int).to_numpy()
    else:
        classes, labels = list(DIAGNOSIS_CLASSES), encode(groups5, DIAGNOSIS_CLASSES)
    empty = frame[column].str.strip() == ""
    if empty.any():
        raise DatasetError(f"dataset '{NAME}': {int(empty.sum())} row(s) of meta.csv have an empty '{column}' path")
    index = ImageIndex([base / "images"])
    paths, missing = resolve_images(frame[column], index, base / "images")
    if missing:
        log.warning("derm7pt: %d of %d %s images not found under %s", missing, len(frame), column, base / "images")
    table = pd.DataFrame({"image_id": frame[column].str.strip(), "path": paths, "label": labels,
                          "group": frame["group"], "diagnosis": frame["diagnosis"]})
    if split_source == "index CSVs":
        table["split"] = frame["split"].to_numpy()
    for source, target in (("sex", "sex"), ("location", "site")):
        if source in frame.columns:
            table[target] = clean_values(frame[source])
    info = {"primary_metric": primary_metric_for(len(classes)), "missing_images": missing, "variant": column,
            "groups": "case_num", "split_source": split_source, "rows_in_meta": rows_in_meta,
            "unindexed_rows": rows_in_meta - len(frame) if split_source == "index CSVs" else 0}
    low_data = low_data_settings(NAME, options)
    if low_data:
        info["low_data"] = low_data
    extra = (["clinic"] if column == "clinic" else []) + (["generated-splits"] if split_choice == "generated" else [])
    name = built_name(NAME, task, "melanoma", extra, low_data, options)
    return FileImageDataset(name, table, classes, task=f"{TASKS[task]} ({column} images)",
                            subgroup_columns=("sex", "site"), root=base, info=info)


def _select_splits(frame: pd.DataFrame, base: Path, choice: str, unindexed: str) -> tuple[pd.DataFrame, str]:
    """meta.csv rows with a ``split`` column from the index CSVs (rows in none excluded or refused, per
    ``unindexed``), and where the splits come from: "index CSVs" or "generated (...)" (``split`` all None)."""
    frame = frame.copy()
    frame["split"] = _official_splits(base, len(frame)) if choice == "official" else None
    indexed = frame["split"].notna()
    if not indexed.any():
        return frame, "generated (splits=generated)" if choice == "generated" else "generated (no index CSVs)"
    if not indexed.all():
        unlisted = int((~indexed).sum())
        if unindexed == "error":
            raise DatasetError(f"dataset '{NAME}': {unlisted} of {len(frame)} meta.csv rows are in no index CSV "
                               f"(e.g. rows {np.flatnonzero(~indexed.to_numpy())[:5].tolist()}); use "
                               f"--dataset-option unindexed=exclude to drop them or splits=generated to use every row")
        log.warning("derm7pt: %d of %d meta.csv rows are in no index CSV; they are excluded (counted in the record "
                    "as unindexed_rows; --dataset-option splits=generated uses every row)", unlisted, len(frame))
        frame = frame[indexed].reset_index(drop=True)
    return frame, "index CSVs"


def _official_splits(base: Path, n_rows: int) -> pd.Series:
    """Split names from the index CSVs (all None when they are absent; None for rows in no index CSV)."""
    split = pd.Series([None] * n_rows, dtype=object)
    files = {s: base / "meta" / f for s, f in SPLIT_FILES.items()}
    present = [s for s, p in files.items() if p.is_file()]
    if not present:
        log.info("derm7pt: no index CSVs in %s; splits will be generated", base / "meta")
        return split
    if len(present) < 3:
        raise DatasetError(f"dataset '{NAME}': only {[files[s].name for s in present]} found in {base / 'meta'}; "
                           f"put all of train_indexes.csv, valid_indexes.csv, test_indexes.csv there or none")
    for name, path in files.items():
        frame = read_csv(path, ("indexes",), NAME)
        try:
            rows = frame["indexes"].astype(int).to_numpy()
        except ValueError:
            raise DatasetError(f"dataset '{NAME}': {path.name} column 'indexes' must hold integers") from None
        if rows.min() < 0 or rows.max() >= n_rows:
            raise DatasetError(f"dataset '{NAME}': {path.name} has indexes outside 0..{n_rows - 1} (meta.csv rows)")
        if split.iloc[rows].notna().any():
            raise DatasetError(f"dataset '{NAME}': {path.name} repeats rows already in another split")
        split.iloc[rows] = name
    return split


DATASETS.add(NAME, DatasetSpec(
    name=NAME, build=build_derm7pt, tasks=tuple(TASKS),
    description="derm7pt (EDRA atlas) clinical or dermoscopic images, melanoma or 5-class diagnosis, official splits",
    files_present=lambda root: root is not None and _present(Path(root)),
    source="https://derm.cs.sfu.ca (registration)", licence="research use (see the release terms)",
    extra={"folder": "derm7pt"}))


def _present(root: Path) -> bool:
    try:
        release_dir(root)
    except DatasetError:
        return False
    return True
