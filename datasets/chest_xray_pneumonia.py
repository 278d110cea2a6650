"""Chest X-ray pneumonia (Kermany et al. 2018; the Kaggle "chest_xray" release): 5,856 paediatric X-rays.

Layout (``--root DIR``; ``DIR`` may also be the folder holding ``chest_xray/``)::

    DIR/train/NORMAL/IM-0115-0001.jpeg          DIR/train/PNEUMONIA/person1_bacteria_1.jpeg
    DIR/val/{NORMAL,PNEUMONIA}/...              DIR/test/{NORMAL,PNEUMONIA}/...

Task: ``pneumonia`` (binary, NORMAL 0 / PNEUMONIA 1). Official train/val/test folders are the
splits. **The official val split is tiny (16 images, 8 per class)**, so C or early-stopping chosen
on it is noisy: ``--dataset-option val=carve`` folds it into train and carves a grouped,
stratified 20 % val from train instead (test untouched). Groups: the patient in the file name
(``person123``, ``IM-0115``, ``NORMAL2-IM-1427``), so carving keeps a patient's images together.
No subgroups.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from datasets.base import DatasetError, DatasetSpec, FileImageDataset
from datasets.common import (IMAGE_SUFFIXES, built_name, check_options, choose_option, choose_task,
                             low_data_settings, resolve_root)
from datasets.registry import DATASETS

log = logging.getLogger(__name__)

NAME = "chest-xray-pneumonia"
CLASSES = ["NORMAL", "PNEUMONIA"]
SPLIT_FOLDERS = {"train": "train", "val": "val", "test": "test"}
TASKS = {"pneumonia": "binary: NORMAL (0) vs PNEUMONIA (1)"}
_PATIENT = re.compile(r"^(person\d+|(?:normal2-)?im-\d+)", re.IGNORECASE)


def patient_id(filename: str) -> str:
    """``person1_bacteria_1.jpeg`` -> ``person1``; ``NORMAL2-IM-1427-0001.jpeg`` -> ``normal2-im-1427``."""
    match = _PATIENT.match(filename)
    return match.group(1).lower() if match else Path(filename).stem.lower()


def release_dir(root: Path) -> Path:
    for candidate in (root, root / "chest_xray", root / "chest_xray" / "chest_xray"):
        if all((candidate / s / c).is_dir() for s in ("train", "test") for c in CLASSES):
            return candidate
    raise DatasetError(f"dataset '{NAME}': expected {root}/train/NORMAL, train/PNEUMONIA, test/NORMAL, "
                       f"test/PNEUMONIA (and val/) from the Kaggle chest_xray release; not found under {root}")


def build_chest_xray_pneumonia(root: Path | None, options: dict) -> FileImageDataset:
    check_options(NAME, options, ("val",))
    task = choose_task(NAME, options, TASKS)
    val_mode = choose_option(NAME, options, "val", {"official": "the 16-image val folder (default)",
                                                     "carve": "20 % of train, grouped by patient"})
    base = release_dir(resolve_root(NAME, root, "chest_xray", "train/ test/ val/ with NORMAL/ and PNEUMONIA/"))
    rows = []
    for split, folder in SPLIT_FOLDERS.items():
        for label, name in enumerate(CLASSES):
            directory = base / folder / name
            if not directory.is_dir():
                continue
            for path in sorted(directory.iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                    rows.append({"image_id": f"{folder}/{name}/{path.name}", "path": str(path), "label": label,
                                 "group": patient_id(path.name), "split": split})
    table = pd.DataFrame(rows)
    n_val = int((table["split"] == "val").sum())
    if val_mode == "carve" or n_val == 0:
        table.loc[table["split"] == "val", "split"] = "train"
    elif n_val < 100:
        log.warning("chest-xray-pneumonia: the official val split has only %d images; model selection on it is "
                    "noisy (use --dataset-option val=carve for a 20%% grouped val carved from train)", n_val)
    table, shared = _merge_patients_across_splits(table)
    info = {"primary_metric": "auroc", "val": val_mode, "official_val_images": n_val, "groups": "patient (file name)",
            "patients_in_two_official_splits": shared}
    low_data = low_data_settings(NAME, options)
    if low_data:
        info["low_data"] = low_data
    name = built_name(NAME, task, "pneumonia", ["val-carved"] if val_mode == "carve" else [], low_data, options)
    return FileImageDataset(name, table, list(CLASSES), task=TASKS[task], root=base, info=info)


def _merge_patients_across_splits(table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Official folders may put one patient id in two splits; keep them as separate groups per split.

    The official split is used as released (it is the benchmark everyone reports); a patient id seen
    in two official splits is made split-specific (``person1@test``) and counted in the log.
    """
    splits_per_group = table.groupby("group")["split"].nunique()
    shared = splits_per_group[splits_per_group > 1].index
    if len(shared):
        log.warning("chest-xray-pneumonia: %d patient id(s) occur in more than one official split folder "
                    "(kept as released)", len(shared))
        mask = table["group"].isin(shared)
        table.loc[mask, "group"] = table.loc[mask, "group"] + "@" + table.loc[mask, "split"]
    return table, int(len(shared))


DATASETS.add(NAME, DatasetSpec(
    name=NAME, build=build_chest_xray_pneumonia, tasks=tuple(TASKS),
    description="paediatric chest X-ray pneumonia (Kermany), official train/val/test folders (val is tiny: 16 images)",
    files_present=lambda root: root is not None and _present(Path(root)),
    source="https://data.mendeley.com/datasets/rscbjbr9sj/2 (Kaggle: paultimothymooney/chest-xray-pneumonia)",
    licence="CC BY 4.0", extra={"folder": "chest_xray"}))


def _present(root: Path) -> bool:
    try:
        release_dir(root)
    except DatasetError:
        return False
    return True
