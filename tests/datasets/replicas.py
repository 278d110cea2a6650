"""Tiny replicas of upstream dataset layouts, written by the tests (exact column names and nesting)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def write_image(path: Path, seed: int, mode: str = "RGB", size: tuple[int, int] = (12, 9)) -> None:
    """A small seeded noise image; the suffix picks the format (.jpg/.jpeg/.png)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=None).convert(mode).save(path)


def truncate(path: Path) -> None:
    """Cut an image file in half (a truncated download)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_csv(path: Path, header: list[str], rows: list[list], delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue())


HAM_DX = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def make_ham10000(root: Path, lesions_per_class: int = 4, images_per_lesion: tuple[int, ...] = (1, 2),
                  with_ext: bool = True) -> dict:
    """HAM10000 replica: HAM10000_metadata.csv (+ _ext with boxes) and images/ISIC_*.jpg."""
    rows, ext, number = [], [], 24306
    sexes, sites = ["male", "female", "unknown"], ["back", "face", "unknown", "lower extremity"]
    for c, dx in enumerate(HAM_DX):
        for k in range(lesions_per_class):
            lesion = f"HAM_{c:03d}{k:04d}"
            for j in range(images_per_lesion[(c + k) % len(images_per_lesion)]):
                image_id = f"ISIC_{number:07d}"
                age = "" if (c + k) % 5 == 0 else f"{15 + 10 * ((c + k) % 7)}.0"
                row = [lesion, image_id, dx, "histo", age, sexes[(c + k) % 3], sites[(c + k + j) % 4]]
                rows.append(row)
                ext.append([str(len(ext))] + row + [1, 8, 2, 10])
                write_image(root / "images" / f"{image_id}.jpg", number)
                number += 1
    write_csv(root / "HAM10000_metadata.csv", ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"], rows)
    if with_ext:
        write_csv(root / "HAM10000_metadata_ext.csv", ["", "lesion_id", "image_id", "dx", "dx_type", "age", "sex",
                                                      "localization", "top", "bottom", "left", "right"], ext)
    return {"rows": rows}


def no_group_in_two_splits(dataset, split: np.ndarray) -> None:
    """Assert that every group (patient/lesion) sits in one split only."""
    frame = pd.DataFrame({"group": dataset.groups, "split": split})
    assert frame.groupby("group")["split"].nunique().max() == 1
