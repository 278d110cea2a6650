"""NIH ChestX-ray14 (Wang et al. 2017): 112,120 frontal X-rays of 30,805 patients, 14 text-mined findings.

Layout (``--root DIR``)::

    DIR/Data_Entry_2017.csv     Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,
                                View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]
    DIR/images/00000001_000.png       (or the release's images_001/images/ ... images_012/images/)
    DIR/train_val_list.txt, DIR/test_list.txt   optional: the official patient-wise split

Task: ``7-class`` — the single-label subset used by the medical transfer study (ANTON): images
whose ``Finding Labels`` is exactly one of Atelectasis, Cardiomegaly, Effusion, Infiltration,
Mass, Nodule, Pneumothorax; No Finding, Pneumonia and multi-finding images are dropped.
Splits: the official lists when present (val carved from train_val, grouped by patient),
otherwise grouped by ``Patient ID``, stratified, seeded. Subgroups: ``sex``, ``age`` (20-year
bins), ``view`` (PA/AP).
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from datasets.base import DatasetError, DatasetSpec, FileImageDataset
from datasets.common import (ImageIndex, age_bin, built_name, check_options, check_unique, choose_task,
                             clean_values, encode, find_first, low_data_settings, read_csv, resolve_images,
                             resolve_root)
from datasets.registry import DATASETS

log = logging.getLogger(__name__)

NAME = "chestx-ray14"
CSV_NAME = "Data_Entry_2017.csv"
CLASSES = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumothorax"]
TASKS = {"7-class": "single-label images of 7 findings (ANTON's subset)"}
COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender", "View Position")


def build_chestxray14(root: Path | None, options: dict) -> FileImageDataset:
    check_options(NAME, options, ())
    task = choose_task(NAME, options, TASKS)
    root = resolve_root(NAME, root, "chestx-ray14", CSV_NAME)
    csv_path = find_first(root, (CSV_NAME, "Data_Entry_2017_v2020.csv"))
    if csv_path is None:
        raise DatasetError(f"dataset '{NAME}': {root / CSV_NAME} not found; --root must hold {CSV_NAME} and the "
                           f"images (images/ or images_0XX/images/)")
    frame = read_csv(csv_path, COLUMNS, NAME)
    check_unique(frame["Image Index"], "Image Index", NAME, csv_path)
    total = len(frame)
    frame = frame[frame["Finding Labels"].str.strip().isin(CLASSES)].reset_index(drop=True)
    if frame.empty:
        raise DatasetError(f"dataset '{NAME}': no single-label image of {CLASSES} in {csv_path.name}")
    folders = [root / "images"] + sorted(root.glob("images_*"))
    index = ImageIndex(folders)
    if len(index) == 0:
        index = ImageIndex([root])
    paths, missing = resolve_images(frame["Image Index"], index, root / "images")
    if missing:
        log.warning("chestx-ray14: %d of %d images not found under %s", missing, len(frame), root)
    table = pd.DataFrame({"image_id": frame["Image Index"], "path": paths,
                          "label": encode(frame["Finding Labels"].str.strip(), CLASSES), "group": frame["Patient ID"],
                          "sex": clean_values(frame["Patient Gender"], {"m": "male", "f": "female"}),
                          "age": [age_bin(a) for a in frame["Patient Age"]],
                          "view": clean_values(frame["View Position"])})
    official = _official_split(root, table["image_id"])
    if official is not None:
        table["split"] = official
    info = {"primary_metric": "balanced_accuracy", "missing_images": missing, "rows_in_csv": total,
            "single_label_rows": len(frame), "groups": "Patient ID", "official_split": official is not None}
    low_data = low_data_settings(NAME, options)
    if low_data:
        info["low_data"] = low_data
    return FileImageDataset(built_name(NAME, task, "7-class", low_data=low_data, options=options), table, list(CLASSES),
                            task=TASKS[task], subgroup_columns=("sex", "age", "view"), root=root, info=info)


def _official_split(root: Path, ids: pd.Series) -> pd.Series | None:
    train_list, test_list = root / "train_val_list.txt", root / "test_list.txt"
    if not (train_list.is_file() and test_list.is_file()):
        return None
    names = {}
    for split, path in (("train", train_list), ("test", test_list)):
        for line in path.read_text().split():
            names[line.strip()] = split
    split = ids.map(names)
    if split.isna().any():
        raise DatasetError(f"dataset '{NAME}': {int(split.isna().sum())} image(s) are in neither train_val_list.txt "
                           f"nor test_list.txt, e.g. {ids[split.isna()].head(3).tolist()}")
    return split


DATASETS.add(NAME, DatasetSpec(
    name=NAME, build=build_chestxray14, tasks=tuple(TASKS),
    description="NIH ChestX-ray14, single-label 7-finding subset, patient-grouped, sex/age/view subgroups",
    files_present=lambda root: root is not None and (Path(root) / CSV_NAME).is_file(),
    source="https://nihcc.app.box.com/v/ChestXray-NIHCC",
    licence="public, no restrictions stated by the NIH Clinical Center; cite Wang et al. 2017",
    extra={"folder": "chestx-ray14"}))
