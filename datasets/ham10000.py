"""HAM10000 (Tschandl et al. 2018): 10,015 dermoscopy images of 7,470 lesions, 7 diagnoses.

Layout (``--root DIR``)::

    DIR/HAM10000_metadata.csv        lesion_id,image_id,dx,dx_type,age,sex,localization[,dataset]
    DIR/HAM10000_metadata_ext.csv    optional: the same rows plus top,bottom,left,right lesion boxes
    DIR/images/ISIC_0024306.jpg      (or HAM10000_images_part_1/, HAM10000_images_part_2/, or DIR itself)

Tasks (``--dataset-option task=...``): ``dx`` (7-class, default) and ``melanoma`` (mel vs the
other six). No official split: splits are grouped by ``lesion_id`` (several images per lesion),
stratified and seeded. Subgroups: ``sex``, ``age`` (20-year bins), ``site`` (localization).
Lesion boxes, when the ext CSV is present, are available as ``dataset.boxes(indices)``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from datasets.base import DatasetError, DatasetSpec
from datasets.common import (AnnotatedFileImageDataset, ImageIndex, age_bin, built_name, check_options,
                             check_unique, choose_task, clean_values, encode, find_first, low_data_settings,
                             primary_metric_for, read_csv, resolve_images, resolve_root)
from datasets.registry import DATASETS

log = logging.getLogger(__name__)

NAME = "ham10000"
METADATA = "HAM10000_metadata.csv"
METADATA_EXT = "HAM10000_metadata_ext.csv"
DX_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
TASKS = {"dx": "7-class diagnosis (akiec, bcc, bkl, df, mel, nv, vasc)",
         "melanoma": "binary: mel (1) vs the other six diagnoses (0)"}
IMAGE_FOLDERS = ("images", "HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_images")


def _metadata_path(root: Path) -> Path:
    path = find_first(root, (METADATA, f"HAM10000/{METADATA}"))
    if path is None:
        raise DatasetError(f"dataset '{NAME}': {root / METADATA} not found. --root must be the folder with "
                           f"{METADATA} and the images (ISIC_*.jpg) from the Harvard Dataverse download")
    return path


def build_ham10000(root: Path | None, options: dict) -> AnnotatedFileImageDataset:
    check_options(NAME, options, ())
    task = choose_task(NAME, options, TASKS)
    root = resolve_root(NAME, root, "ham10000", METADATA)
    meta_path = _metadata_path(root)
    frame = read_csv(meta_path, ("lesion_id", "image_id", "dx", "age", "sex", "localization"), NAME)
    check_unique(frame["image_id"], "image_id", NAME, meta_path)
    unknown = sorted(set(frame["dx"]) - set(DX_CLASSES))
    if unknown:
        raise DatasetError(f"dataset '{NAME}': {meta_path.name} has dx values {unknown}; expected {DX_CLASSES}")
    base = meta_path.parent
    index = ImageIndex([base / f for f in IMAGE_FOLDERS])
    if len(index) == 0:
        index = ImageIndex([base])
    paths, missing = resolve_images([f"{i}.jpg" for i in frame["image_id"]], index, base / "images")
    if missing:
        log.warning("ham10000: %d of %d images not found under %s", missing, len(frame), base)
    if task == "dx":
        classes, labels = list(DX_CLASSES), encode(frame["dx"], DX_CLASSES)
    else:
        classes, labels = ["other", "melanoma"], (frame["dx"] == "mel").to_numpy().astype(np.int64)
    table = pd.DataFrame({"image_id": frame["image_id"], "path": paths, "label": labels,
                          "group": frame["lesion_id"], "dx": frame["dx"],
                          "sex": clean_values(frame["sex"]), "age": [age_bin(a) for a in frame["age"]],
                          "site": clean_values(frame["localization"])})
    info = {"primary_metric": primary_metric_for(len(classes)), "missing_images": missing,
            "groups": "lesion_id", "n_groups": int(frame["lesion_id"].nunique())}
    ext_path = base / METADATA_EXT
    if ext_path.is_file():
        table = _add_boxes(table, ext_path)
        info["boxes"] = ("dataset.boxes(indices) -> float [N, 4] (left, top, right, bottom) in pixels of the "
                         "stored image; relative=True for fractions of width/height; from " + METADATA_EXT)
    low_data = low_data_settings(NAME, options)
    if low_data:
        info["low_data"] = low_data
    return AnnotatedFileImageDataset(built_name(NAME, task, "dx", low_data=low_data, options=options), table, classes,
                                     task=TASKS[task], subgroup_columns=("sex", "age", "site"), root=base, info=info)


def _add_boxes(table: pd.DataFrame, ext_path: Path) -> pd.DataFrame:
    ext = read_csv(ext_path, ("image_id", "top", "bottom", "left", "right"), NAME)
    ext = ext.drop_duplicates("image_id").set_index("image_id")
    for column, source in (("box_left", "left"), ("box_top", "top"), ("box_right", "right"), ("box_bottom", "bottom")):
        table[column] = pd.to_numeric(table["image_id"].map(ext[source]), errors="coerce")
    absent = int(table["box_left"].isna().sum())
    if absent:
        log.warning("ham10000: %d image(s) have no box in %s", absent, ext_path.name)
    return table


DATASETS.add(NAME, DatasetSpec(
    name=NAME, build=build_ham10000, tasks=tuple(TASKS),
    description="HAM10000 dermoscopy, 10,015 images / 7,470 lesions, lesion-grouped splits, sex/age/site subgroups",
    files_present=lambda root: root is not None and _present(Path(root)),
    source="https://doi.org/10.7910/DVN/DBW86T", licence="CC BY-NC 4.0", extra={"folder": "ham10000"}))


def _present(root: Path) -> bool:
    return find_first(root, (METADATA, f"HAM10000/{METADATA}")) is not None
