"""ISIC 2020 / SIIM-ISIC melanoma classification training set (33,126 images of 2,056 patients).

Layout (``--root DIR``), either the Kaggle or the ISIC download::

    DIR/train.csv                      image_name,patient_id,sex,age_approx,anatom_site_general_challenge,
                                       diagnosis,benign_malignant,target
      or DIR/ISIC_2020_Training_GroundTruth.csv (same columns plus lesion_id)
    DIR/jpeg/train/ISIC_2637011.jpg    (Kaggle; or train/, ISIC_2020_Training_JPEG/train/, ISIC_2020_Training_JPEG/)

Task: ``melanoma`` (``target``: 1 malignant melanoma, 0 benign). No official labelled test set:
splits are grouped by ``patient_id`` (no patient in two splits), stratified, seeded.
Subgroups: ``sex``, ``age`` (20-year bins), ``site``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from datasets.base import DatasetError, DatasetSpec, FileImageDataset
from datasets.common import (ImageIndex, age_bin, built_name, check_options, check_unique, choose_task,
                             clean_values, find_first, low_data_settings, primary_metric_for, read_csv,
                             resolve_images, resolve_root)
from datasets.registry import DATASETS

log = logging.getLogger(__name__)

NAME = "isic2020"
CSV_NAMES = ("train.csv", "ISIC_2020_Training_GroundTruth.csv", "ISIC_2020_Training_GroundTruth_v2.csv")
IMAGE_FOLDERS = ("jpeg/train", "train", "ISIC_2020_Training_JPEG/train", "ISIC_2020_Training_JPEG", "images")
COLUMNS = ("image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge", "target")
TASKS = {"melanoma": "binary: malignant melanoma (target 1) vs benign (0)"}


def build_isic2020(root: Path | None, options: dict) -> FileImageDataset:
    check_options(NAME, options, ())
    task = choose_task(NAME, options, TASKS)
    root = resolve_root(NAME, root, "isic2020", "train.csv")
    csv_path = find_first(root, CSV_NAMES)
    if csv_path is None:
        raise DatasetError(f"dataset '{NAME}': none of {list(CSV_NAMES)} found in {root}; --root must hold the "
                           f"SIIM-ISIC 2020 training CSV and the jpeg/train/ images")
    frame = read_csv(csv_path, COLUMNS, NAME)
    check_unique(frame["image_name"], "image_name", NAME, csv_path)
    bad = sorted(set(frame["target"]) - {"0", "1"})
    if bad:
        raise DatasetError(f"dataset '{NAME}': {csv_path.name} column 'target' has values {bad[:5]}; expected 0/1")
    empty_patient = frame["patient_id"].str.strip() == ""
    if empty_patient.any():
        raise DatasetError(f"dataset '{NAME}': {int(empty_patient.sum())} row(s) of {csv_path.name} have no "
                           f"patient_id; patient-grouped splits need it")
    index = ImageIndex([root / f for f in IMAGE_FOLDERS])
    if len(index) == 0:
        index = ImageIndex([root])
    paths, missing = resolve_images(frame["image_name"], index, root / IMAGE_FOLDERS[0])
    if missing:
        log.warning("isic2020: %d of %d images not found under %s", missing, len(frame), root)
    table = pd.DataFrame({"image_id": frame["image_name"], "path": paths, "label": frame["target"].astype(int),
                          "group": frame["patient_id"], "sex": clean_values(frame["sex"]),
                          "age": [age_bin(a) for a in frame["age_approx"]],
                          "site": clean_values(frame["anatom_site_general_challenge"])})
    if "diagnosis" in frame.columns:
        table["diagnosis"] = frame["diagnosis"].to_numpy()
    info = {"primary_metric": primary_metric_for(2), "missing_images": missing, "groups": "patient_id"}
    low_data = low_data_settings(NAME, options)
    if low_data:
        info["low_data"] = low_data
    return FileImageDataset(built_name(NAME, task, "melanoma", low_data=low_data, options=options), table,
                            ["benign", "melanoma"], task=TASKS[task], subgroup_columns=("sex", "age", "site"),
                            root=root, info=info)


DATASETS.add(NAME, DatasetSpec(
    name=NAME, build=build_isic2020, tasks=tuple(TASKS),
    description="SIIM-ISIC 2020 melanoma, 33,126 images, patient-grouped splits, sex/age/site subgroups",
    files_present=lambda root: root is not None and find_first(Path(root), CSV_NAMES) is not None,
    source="https://challenge.isic-archive.com/data/#2020 (or Kaggle siim-isic-melanoma-classification)",
    licence="CC BY-NC 4.0", extra={"folder": "isic2020"}))
