"""ISIC 2019 training set (25,331 dermoscopy images, 8 diagnoses) and CHAVES's melanoma task.

Layout (``--root DIR``)::

    DIR/ISIC_2019_Training_GroundTruth.csv   image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK (one-hot floats)
    DIR/ISIC_2019_Training_Metadata.csv      optional: image,age_approx,anatom_site_general,lesion_id,sex
    DIR/ISIC_2019_Training_Input/ISIC_0000000.jpg   (some are ISIC_xxx_downsampled.jpg)

Tasks: ``8-class`` (default; UNK has no training images) and ``melanoma`` (CHAVES: MEL=1 vs
NV, BKL, AK, VASC, DF = 0; BCC, SCC and UNK removed).

Splits: the option ``split_dir=FOLDER`` takes a user's split CSVs, e.g. CHAVES's
``datasplits/isic2019/splits`` (or ``splits_1_percent_3``): ``train*.csv``, ``val*.csv``,
``test*.csv`` with an ``image`` column (bare id or ``ISIC_2019_Training_Input/<id>``, with or
without ``.jpg``) and optionally ``label`` (checked against the ground truth). Only the listed
images are used. Without it: grouped (``lesion_id`` from the metadata CSV when present), stratified,
seeded splits. ``groups=image`` ignores lesion ids (each image its own group): needed for split
CSVs that put one lesion in two splits, which are otherwise refused as leaking. Low-data subsets: ``low_data=0.01`` / ``0.1`` with ``low_data_seed=1..5``, drawn
from train only. Subgroups (metadata CSV): ``sex``, ``age``, ``site``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from datasets.base import DatasetError, DatasetSpec, FileImageDataset
from datasets.common import (ImageIndex, age_bin, built_name, check_options, check_unique, choose_option, choose_task,
                             clean_values, find_first, low_data_settings, primary_metric_for, read_csv, resolve_images,
                             resolve_root)
from datasets.registry import DATASETS

log = logging.getLogger(__name__)

NAME = "isic2019"
GROUND_TRUTH = "ISIC_2019_Training_GroundTruth.csv"
METADATA = "ISIC_2019_Training_Metadata.csv"
IMAGE_FOLDER = "ISIC_2019_Training_Input"
GT_COLUMNS = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
EIGHT_CLASSES = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
MELANOMA_NEGATIVES = ("NV", "BKL", "AK", "VASC", "DF")
TASKS = {"8-class": "8 diagnoses MEL, NV, BCC, AK, BKL, DF, VASC, SCC",
         "melanoma": "binary (CHAVES): MEL (1) vs NV, BKL, AK, VASC, DF (0); BCC, SCC, UNK removed"}


def diagnosis_from_one_hot(frame: pd.DataFrame, path: Path) -> pd.Series:
    """The column name holding the 1 of each one-hot row; a row without exactly one 1 is an error."""
    try:
        values = frame[GT_COLUMNS].astype(float).to_numpy()
    except ValueError as error:
        raise DatasetError(f"dataset '{NAME}': {path.name} has non-numeric one-hot values ({error})") from None
    ones = (values > 0.5).sum(axis=1)
    bad = np.flatnonzero(ones != 1)
    if len(bad):
        raise DatasetError(f"dataset '{NAME}': {path.name} rows {[int(b) + 2 for b in bad[:5]]} do not have "
                           f"exactly one diagnosis set to 1.0 (lines counting the header as 1)")
    return pd.Series(np.array(GT_COLUMNS)[values.argmax(axis=1)], index=frame.index)


def image_key(value: str) -> str:
    """``ISIC_2019_Training_Input/ISIC_0000001.jpg`` -> ``ISIC_0000001`` (CHAVES prefixes val/test rows)."""
    name = str(value).strip().replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in (".jpg", ".jpeg", ".png", ".JPG"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def read_split_dir(folder: Path) -> pd.DataFrame:
    """CHAVES-style split CSVs in ``folder`` -> frame ``image_id, split[, label]``."""
    if not folder.is_dir():
        raise DatasetError(f"dataset '{NAME}': split_dir {folder} is not a folder")
    parts = []
    for split, prefixes in (("train", ("train",)), ("val", ("val", "valid")), ("test", ("test",))):
        files = sorted(p for p in folder.glob("*.csv") if p.name.lower().startswith(prefixes))
        if not files:
            raise DatasetError(f"dataset '{NAME}': split_dir {folder} has no {split}*.csv (expected "
                               f"train_split_1.csv, val_split_1.csv, test_split_1.csv as in CHAVES's datasplits)")
        if len(files) > 1:
            raise DatasetError(f"dataset '{NAME}': split_dir {folder} has several {split} CSVs "
                               f"{[f.name for f in files]}; keep one per split in the folder")
        frame = read_csv(files[0], ("image",), NAME)
        part = pd.DataFrame({"image_id": frame["image"].map(image_key), "split": split})
        if "label" in frame.columns:
            part["split_label"] = frame["label"]
        parts.append(part)
    splits = pd.concat(parts, ignore_index=True)
    twice = splits["image_id"][splits["image_id"].duplicated()]
    if len(twice):
        raise DatasetError(f"dataset '{NAME}': split_dir {folder} lists images in more than one split (or twice), "
                           f"e.g. {sorted(set(twice))[:5]}")
    return splits


def build_isic2019(root: Path | None, options: dict) -> FileImageDataset:
    check_options(NAME, options, ("split_dir", "groups"))
    task = choose_task(NAME, options, TASKS)
    grouping = choose_option(NAME, options, "groups", {"lesion": "group by lesion_id (default)",
                                                        "image": "every image its own group"})
    root = resolve_root(NAME, root, "isic2019", GROUND_TRUTH)
    gt_path = find_first(root, (GROUND_TRUTH,))
    if gt_path is None:
        raise DatasetError(f"dataset '{NAME}': {root / GROUND_TRUTH} not found; --root must hold the ISIC 2019 "
                           f"training ground truth CSV and the {IMAGE_FOLDER}/ folder")
    frame = read_csv(gt_path, ["image"] + GT_COLUMNS, NAME)
    check_unique(frame["image"], "image", NAME, gt_path)
    frame["dx"] = diagnosis_from_one_hot(frame, gt_path)
    frame = _join_metadata(frame, root)
    if grouping == "image":
        frame["group"] = frame["image"]
        extra_name = ["image-groups"]
    else:
        extra_name = []
    if task == "8-class":
        classes = list(EIGHT_CLASSES)
        frame = frame[frame["dx"] != "UNK"].copy()
        frame["label"] = frame["dx"].map({c: i for i, c in enumerate(classes)})
    else:
        classes = ["benign", "melanoma"]
        frame = frame[frame["dx"].isin(("MEL",) + MELANOMA_NEGATIVES)].copy()
        frame["label"] = (frame["dx"] == "MEL").astype(int)
    frame = frame.reset_index(drop=True)
    info: dict = {"primary_metric": primary_metric_for(len(classes)), "groups": grouping}
    if options.get("split_dir"):
        frame = _apply_split_dir(frame, Path(str(options["split_dir"])).expanduser(), task)
        info["split_dir"] = str(options["split_dir"])
        extra_name.append("splits-" + Path(str(options["split_dir"])).name)
    index = ImageIndex([root / IMAGE_FOLDER])  # also finds the zip's doubled Input/Input/ nesting
    if len(index) == 0:
        index = ImageIndex([root])
    names = [n if index.lookup(n) is not None else f"{n}_downsampled" for n in frame["image"]]
    paths, missing = resolve_images(names, index, root / IMAGE_FOLDER)
    if missing:
        log.warning("isic2019: %d of %d images not found under %s", missing, len(frame), root / IMAGE_FOLDER)
    info["missing_images"] = missing
    table = pd.DataFrame({"image_id": frame["image"], "path": paths, "label": frame["label"].astype(int),
                          "group": frame["group"], "dx": frame["dx"]})
    for column in ("sex", "age", "site", "split"):
        if column in frame.columns:
            table[column] = frame[column].to_numpy()
    low_data = low_data_settings(NAME, options)
    if low_data:
        info["low_data"] = low_data
    name = built_name(NAME, task, "8-class", extra_name, low_data, options)
    return FileImageDataset(name, table, classes, task=TASKS[task], subgroup_columns=("sex", "age", "site"),
                            root=root, info=info)


def _join_metadata(frame: pd.DataFrame, root: Path) -> pd.DataFrame:
    meta_path = root / METADATA
    frame["group"] = frame["image"]
    if not meta_path.is_file():
        log.info("isic2019: %s absent; each image is its own group and there are no subgroups", METADATA)
        return frame
    meta = read_csv(meta_path, ("image",), NAME).drop_duplicates("image").set_index("image")
    if "lesion_id" in meta.columns:
        lesion = frame["image"].map(meta["lesion_id"]).fillna("")
        frame["group"] = np.where(lesion.str.strip() != "", lesion, frame["image"])
    if "sex" in meta.columns:
        frame["sex"] = clean_values(frame["image"].map(meta["sex"]))
    if "age_approx" in meta.columns:
        frame["age"] = [age_bin(a) for a in frame["image"].map(meta["age_approx"])]
    site_column = "anatom_site_general" if "anatom_site_general" in meta.columns else None
    if site_column:
        frame["site"] = clean_values(frame["image"].map(meta[site_column]))
    return frame


def _apply_split_dir(frame: pd.DataFrame, folder: Path, task: str) -> pd.DataFrame:
    splits = read_split_dir(folder)
    known = set(frame["image"])
    unknown = splits.loc[~splits["image_id"].isin(known), "image_id"]
    if len(unknown):
        raise DatasetError(f"dataset '{NAME}': split_dir {folder} lists {len(unknown)} image(s) that are not in the "
                           f"'{task}' task of the ground truth, e.g. {unknown.head(3).tolist()}. Check the task option "
                           f"(CHAVES's splits are for task=melanoma)")
    merged = frame.merge(splits, left_on="image", right_on="image_id", how="inner").drop(columns=["image_id"])
    if "split_label" in merged.columns:
        given = pd.to_numeric(merged["split_label"], errors="coerce")
        wrong = merged.loc[given != merged["label"], "image"]
        if len(wrong):
            raise DatasetError(f"dataset '{NAME}': split CSV labels disagree with the ground truth for {len(wrong)} "
                               f"image(s), e.g. {wrong.head(3).tolist()}; is the task option right?")
        merged = merged.drop(columns=["split_label"])
    leaking = merged.groupby("group")["split"].nunique()
    leaking = leaking[leaking > 1]
    if len(leaking):
        raise DatasetError(f"dataset '{NAME}': split_dir {folder} puts {len(leaking)} lesion(s) (lesion_id in {METADATA}) "
                           f"in more than one split, e.g. {leaking.index[:3].tolist()}: these splits leak. To use them "
                           f"anyway (e.g. to reproduce a published protocol), add --dataset-option groups=image; the "
                           f"dataset name then ends in -image-groups so the records say so")
    dropped = len(frame) - len(merged)
    if dropped:
        log.info("isic2019: %d image(s) of the task are in no split CSV and are left out", dropped)
    return merged


DATASETS.add(NAME, DatasetSpec(
    name=NAME, build=build_isic2019, tasks=tuple(TASKS),
    description="ISIC 2019 training set, 8 diagnoses or CHAVES melanoma-vs-benign; user split CSVs; low-data subsets",
    files_present=lambda root: root is not None and (Path(root) / GROUND_TRUTH).is_file(),
    source="https://challenge.isic-archive.com/data/#2019", licence="CC BY-NC 4.0", extra={"folder": "isic2019"}))
