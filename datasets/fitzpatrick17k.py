"""Fitzpatrick17k (Groh et al. 2021): 16,577 clinical images of 114 conditions with Fitzpatrick skin types.

Layout (``--root DIR``)::

    DIR/fitzpatrick17k.csv     md5hash,fitzpatrick_scale,fitzpatrick_centaur,label,nine_partition_label,
                               three_partition_label,qc,url,url_alphanum
    DIR/<md5hash>.jpg          (or DIR/images/, DIR/data/finalfitz17k/, DIR/finalfitz17k/)

The images are fetched by the user from the URLs in the CSV, so some are missing, and a few
are greyscale (X-rays, per the upstream README) or unreadable. Those rows are **dropped**, never a
crash: the counts are logged and kept in ``dataset.info["dropped"]``. Option ``verify``:
``header`` (default: open each header, drop missing, unreadable and non-RGB files), ``full``
(decode every image, also catches truncated files; slow) or ``none``.

Tasks: ``nine-partition`` (default, as DERMA), ``three-partition`` (benign, malignant,
non-neoplastic), ``condition`` (the 114 labels). No official split: stratified, seeded; each
image is its own group. Subgroups: ``fitzpatrick`` (``fitzpatrick_scale``; -1 = unknown).
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from datasets.base import DatasetError, DatasetSpec, FileImageDataset
from datasets.common import (ImageIndex, built_name, check_options, check_unique, choose_option, choose_task, encode,
                             find_first, fitzpatrick_values, low_data_settings, primary_metric_for, read_csv,
                             resolve_root)
from datasets.registry import DATASETS

log = logging.getLogger(__name__)

NAME = "fitzpatrick17k"
CSV_NAME = "fitzpatrick17k.csv"
COLUMNS = ("md5hash", "fitzpatrick_scale", "label", "nine_partition_label", "three_partition_label")
TASKS = {"nine-partition": "9 groups (nine_partition_label)",
         "three-partition": "benign / malignant / non-neoplastic (three_partition_label)",
         "condition": "the 114 condition labels (label)"}
TASK_COLUMNS = {"nine-partition": "nine_partition_label", "three-partition": "three_partition_label",
                "condition": "label"}
IMAGE_FOLDERS = ("images", "data/finalfitz17k", "finalfitz17k", "data")
VERIFY = {"header": "open every image header (default)", "full": "decode every image", "none": "no check"}
GREYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")  # single-channel files (X-rays); colour modes are kept


def image_problem(path: Path, verify: str) -> str | None:
    """Why ``path`` cannot be used ("missing", "unreadable", "non-RGB (mode L)"), or None when it is fine."""
    if not path.is_file():
        return "missing"
    if verify == "none":
        return None
    try:
        with Image.open(path) as image:
            mode = image.mode
            if verify == "full":
                image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return "unreadable"
    if mode in GREYSCALE_MODES:
        return f"non-RGB (mode {mode})"
    return None


def build_fitzpatrick17k(root: Path | None, options: dict) -> FileImageDataset:
    check_options(NAME, options, ("verify",))
    task = choose_task(NAME, options, TASKS)
    verify = choose_option(NAME, options, "verify", VERIFY)
    root = resolve_root(NAME, root, "fitzpatrick17k", CSV_NAME)
    csv_path = find_first(root, (CSV_NAME,))
    if csv_path is None:
        raise DatasetError(f"dataset '{NAME}': {root / CSV_NAME} not found; --root must hold {CSV_NAME} and the "
                           f"downloaded images named <md5hash>.jpg")
    frame = read_csv(csv_path, COLUMNS, NAME)
    check_unique(frame["md5hash"], "md5hash", NAME, csv_path)
    index = ImageIndex([root / f for f in IMAGE_FOLDERS])
    if len(index) == 0:
        index = ImageIndex([root])
    keep, dropped, examples = [], {}, {}
    paths = []
    for md5hash in frame["md5hash"]:
        found = index.lookup(f"{md5hash}.jpg") or index.lookup(md5hash)
        path = found if found is not None else root / f"{md5hash}.jpg"
        problem = image_problem(path, verify)
        keep.append(problem is None)
        paths.append(str(path))
        if problem is not None:
            kind = problem.split(" ")[0]
            dropped[kind] = dropped.get(kind, 0) + 1
            if len(examples.setdefault(kind, [])) < 3:
                examples[kind].append(f"{path.name}: {problem}")
    frame["path"] = paths
    frame = frame[keep].reset_index(drop=True)
    if dropped:
        log.warning("fitzpatrick17k: dropped %d of %d images (%s); e.g. %s", sum(dropped.values()),
                    len(keep), ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items())),
                    "; ".join(e for v in examples.values() for e in v))
    if frame.empty:
        raise DatasetError(f"dataset '{NAME}': none of the {len(keep)} images in {csv_path.name} is usable "
                           f"({dropped}); download them next to the CSV as <md5hash>.jpg")
    column = TASK_COLUMNS[task]
    classes = sorted(frame[column].unique())
    table = pd.DataFrame({"image_id": frame["md5hash"], "path": frame["path"], "label": encode(frame[column], classes),
                          "group": frame["md5hash"], "fitzpatrick": fitzpatrick_values(frame["fitzpatrick_scale"])})
    info = {"primary_metric": primary_metric_for(len(classes)), "verify": verify,
            "dropped": {"total": sum(dropped.values()), **dropped, "examples": examples}, "rows_in_csv": len(keep)}
    low_data = low_data_settings(NAME, options)
    if low_data:
        info["low_data"] = low_data
    return FileImageDataset(built_name(NAME, task, "nine-partition", low_data=low_data, options=options), table,
                            classes, task=TASKS[task], subgroup_columns=("fitzpatrick",), root=root, info=info)


DATASETS.add(NAME, DatasetSpec(
    name=NAME, build=build_fitzpatrick17k, tasks=tuple(TASKS),
    description="Fitzpatrick17k clinical images, 114 conditions (9/3 partitions), Fitzpatrick I-VI subgroups",
    files_present=lambda root: root is not None and (Path(root) / CSV_NAME).is_file(),
    source="https://github.com/mattgroh/fitzpatrick17k (images from the CSV's URLs)",
    licence="CC BY-NC-SA 3.0 (images: the source atlases' terms)", extra={"folder": "fitzpatrick17k"}))
