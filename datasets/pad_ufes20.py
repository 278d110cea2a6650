"""PAD-UFES-20 (Pacheco et al. 2020): 2,298 smartphone images of 1,641 lesions from 1,373 patients.

Layout (``--root DIR``)::

    DIR/metadata.csv    patient_id,lesion_id,smoke,drink,background_father,background_mother,age,pesticide,
                        gender,skin_cancer_history,cancer_history,has_piped_water,has_sewage_system,
                        fitspatrick,region,diameter_1,diameter_2,diagnostic,itch,grew,hurt,changed,bleed,
                        elevation,img_id,biopsed
    DIR/images/PAT_1516_1765_530.png   (flat, or in imgs_part_1/ .. imgs_part_3/ as in the zip)

Tasks: ``6-class`` (default; ACK, BCC, MEL, NEV, SCC, SEK) and ``melanoma`` (CHAVES: MEL=1 vs
ACK, NEV, SEK = 0; BCC and SCC removed). No official split: grouped by ``patient_id``,
stratified, seeded. Subgroups: ``fitzpatrick`` (the release spells the column ``fitspatrick``),
``sex`` (``gender``), ``age`` (20-year bins), ``site`` (``region``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from datasets.base import DatasetError, DatasetSpec, FileImageDataset
from datasets.common import (ImageIndex, age_bin, built_name, check_options, check_unique, choose_task,
                             clean_values, encode, find_first, fitzpatrick_values, low_data_settings,
                             primary_metric_for, read_csv, resolve_images, resolve_root)
from datasets.registry import DATASETS

log = logging.getLogger(__name__)

NAME = "pad-ufes-20"
CLASSES = ["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"]
MELANOMA_NEGATIVES = ("ACK", "NEV", "SEK")
TASKS = {"6-class": "6 diagnoses ACK, BCC, MEL, NEV, SCC, SEK",
         "melanoma": "binary (CHAVES): MEL (1) vs ACK, NEV, SEK (0); BCC, SCC removed"}
REQUIRED = ("patient_id", "lesion_id", "age", "gender", "fitspatrick", "region", "diagnostic", "img_id")


def build_pad_ufes20(root: Path | None, options: dict) -> FileImageDataset:
    check_options(NAME, options, ())
    task = choose_task(NAME, options, TASKS)
    root = resolve_root(NAME, root, "pad-ufes-20", "metadata.csv")
    csv_path = find_first(root, ("metadata.csv",))
    if csv_path is None:
        raise DatasetError(f"dataset '{NAME}': {root / 'metadata.csv'} not found; --root must hold the PAD-UFES-20 "
                           f"metadata.csv and images/")
    frame = read_csv(csv_path, REQUIRED, NAME)
    check_unique(frame["img_id"], "img_id", NAME, csv_path)
    unknown = sorted(set(frame["diagnostic"]) - set(CLASSES))
    if unknown:
        raise DatasetError(f"dataset '{NAME}': {csv_path.name} has diagnostic values {unknown}; expected {CLASSES}")
    if task == "6-class":
        classes = list(CLASSES)
        labels = encode(frame["diagnostic"], classes)
    else:
        classes = ["benign", "melanoma"]
        frame = frame[frame["diagnostic"].isin(("MEL",) + MELANOMA_NEGATIVES)].reset_index(drop=True)
        labels = (frame["diagnostic"] == "MEL").astype(int).to_numpy()
    index = ImageIndex([root / "images", root / "imgs"])
    if len(index) == 0:
        index = ImageIndex([root])
    paths, missing = resolve_images(frame["img_id"], index, root / "images")
    if missing:
        log.warning("pad-ufes-20: %d of %d images not found under %s", missing, len(frame), root / "images")
    table = pd.DataFrame({"image_id": frame["img_id"], "path": paths, "label": labels, "group": frame["patient_id"],
                          "lesion_id": frame["lesion_id"], "diagnostic": frame["diagnostic"],
                          "fitzpatrick": fitzpatrick_values(frame["fitspatrick"]),
                          "sex": clean_values(frame["gender"]), "age": [age_bin(a) for a in frame["age"]],
                          "site": clean_values(frame["region"])})
    info = {"primary_metric": primary_metric_for(len(classes)), "missing_images": missing, "groups": "patient_id"}
    low_data = low_data_settings(NAME, options)
    if low_data:
        info["low_data"] = low_data
    return FileImageDataset(built_name(NAME, task, "6-class", low_data=low_data, options=options), table, classes,
                            task=TASKS[task], subgroup_columns=("fitzpatrick", "sex", "age", "site"), root=root,
                            info=info)


DATASETS.add(NAME, DatasetSpec(
    name=NAME, build=build_pad_ufes20, tasks=tuple(TASKS),
    description="PAD-UFES-20 smartphone skin images, 6 diagnoses or melanoma task, patient-grouped, Fitzpatrick subgroups",
    files_present=lambda root: root is not None and (Path(root) / "metadata.csv").is_file(),
    source="https://doi.org/10.17632/zr7vgbcyr2.1", licence="CC BY 4.0", extra={"folder": "pad-ufes-20"}))
