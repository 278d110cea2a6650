"""ISIC 2019 (8-class, CHAVES melanoma task, split CSVs, low-data subsets) and ISIC 2020 replicas."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from datasets.base import DatasetError
from datasets.isic2019 import GT_COLUMNS, build_isic2019
from datasets.isic2020 import build_isic2020
from datasets.splits import resolve_splits
from tests.datasets.replicas import no_group_in_two_splits, write_csv, write_image

# per diagnosis: number of images in the replica (UNK never occurs in the real training set either)
ISIC19_COUNTS = {"MEL": 12, "NV": 14, "BCC": 4, "AK": 4, "BKL": 6, "DF": 4, "VASC": 4, "SCC": 3}


def make_isic2019(root: Path) -> pd.DataFrame:
    rows, meta, number = [], [], 0
    for dx, count in ISIC19_COUNTS.items():
        for k in range(count):
            image = f"ISIC_{number:07d}"
            rows.append([image] + [1.0 if c == dx else 0.0 for c in GT_COLUMNS])
            lesion = f"IL_{number // 2:07d}" if k % 3 else ""  # pairs share a lesion; some rows have none
            meta.append([image, str(30 + 5 * (k % 8)), ["anterior torso", "head/neck", ""][k % 3], lesion,
                         ["male", "female"][k % 2]])
            name = f"{image}_downsampled.jpg" if number % 10 == 3 else f"{image}.jpg"
            write_image(root / "ISIC_2019_Training_Input" / name, number)
            number += 1
    write_csv(root / "ISIC_2019_Training_GroundTruth.csv", ["image"] + GT_COLUMNS, rows)
    write_csv(root / "ISIC_2019_Training_Metadata.csv", ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"],
              meta)
    return pd.DataFrame(rows, columns=["image"] + GT_COLUMNS)


def write_chaves_splits(folder: Path, frame: pd.DataFrame) -> dict[str, list[str]]:
    """CHAVES layout: train rows hold bare ids, val/test rows are prefixed ISIC_2019_Training_Input/."""
    keep = frame[(frame["BCC"] + frame["SCC"] + frame["UNK"]) == 0].reset_index(drop=True)
    parts = {"train": keep.iloc[0::3], "val": keep.iloc[1::3], "test": keep.iloc[2::3]}
    out = {}
    for split, part in parts.items():
        prefix = "" if split == "train" else "ISIC_2019_Training_Input/"
        rows = [[prefix + r["image"]] + [r[c] for c in GT_COLUMNS] + [int(r["MEL"] == 1.0)] for _, r in part.iterrows()]
        write_csv(folder / f"{split}_split_1.csv", ["image"] + GT_COLUMNS + ["label"], rows)
        out[split] = part["image"].tolist()
    return out


@pytest.fixture
def isic19(tmp_path: Path):
    root = tmp_path / "isic2019"
    return root, make_isic2019(root)


def test_isic2019_eight_class_and_melanoma(isic19, tmp_path: Path):
    root, frame = isic19
    dataset = build_isic2019(root, {})
    assert dataset.classes == ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    assert dataset.class_counts() == ISIC19_COUNTS
    assert dataset.info["primary_metric"] == "balanced_accuracy" and dataset.info["missing_images"] == 0
    assert dataset.path(3).name == "ISIC_0000003_downsampled.jpg"
    # lesion_id groups (pairs), the image itself when the metadata has none
    assert dataset.groups[1] == "IL_0000000" and dataset.groups[0] == "ISIC_0000000"
    assert set(dataset.subgroup_columns) == {"sex", "age", "site"}
    no_group_in_two_splits(dataset, resolve_splits(dataset, tmp_path / "r", seed=0).split)

    melanoma = build_isic2019(root, {"task": "melanoma"})
    assert melanoma.name == "isic2019-melanoma" and melanoma.classes == ["benign", "melanoma"]
    assert len(melanoma) == sum(ISIC19_COUNTS.values()) - ISIC19_COUNTS["BCC"] - ISIC19_COUNTS["SCC"]
    assert set(melanoma.table["dx"]) == {"MEL", "NV", "AK", "BKL", "DF", "VASC"}
    assert np.array_equal(melanoma.labels, (melanoma.table["dx"] == "MEL").astype(int).to_numpy())
    assert melanoma.info["primary_metric"] == "auroc"


def test_isic2019_chaves_split_csvs(isic19, tmp_path: Path):
    root, frame = isic19
    expected = write_chaves_splits(tmp_path / "splits", frame)
    # the replica's row-wise split cuts lesion pairs: refused as leaking unless groups=image is explicit
    with pytest.raises(DatasetError, match="groups=image"):
        build_isic2019(root, {"task": "melanoma", "split_dir": str(tmp_path / "splits")})
    options = {"task": "melanoma", "split_dir": str(tmp_path / "splits"), "groups": "image"}
    dataset = build_isic2019(root, options)
    assert dataset.name == "isic2019-melanoma-image-groups-splits-splits"
    assert dataset.has_official_splits
    for split, images in expected.items():
        assert sorted(dataset.table.loc[dataset.table["split"] == split, "image_id"]) == sorted(images)
    assignment = resolve_splits(dataset, tmp_path / "r")
    assert assignment.source == "official"
    bad = pd.read_csv(tmp_path / "splits" / "train_split_1.csv")
    bad.loc[0, "label"] = 1 - bad.loc[0, "label"]
    bad.to_csv(tmp_path / "splits" / "train_split_1.csv", index=False)
    with pytest.raises(DatasetError, match="disagree with the ground truth"):
        build_isic2019(root, options)
    (tmp_path / "splits" / "test_split_1.csv").unlink()
    with pytest.raises(DatasetError, match="no test"):
        build_isic2019(root, options)


def test_isic2019_low_data_subsets_from_train_only(isic19, tmp_path: Path):
    root, frame = isic19
    write_chaves_splits(tmp_path / "splits", frame)
    options = {"task": "melanoma", "split_dir": str(tmp_path / "splits"), "groups": "image"}
    full = resolve_splits(build_isic2019(root, options), tmp_path / "r")
    subsets = {}
    for seed in (1, 2, 3):
        dataset = build_isic2019(root, {**options, "low_data": "10pct", "low_data_seed": seed})
        assert dataset.name.endswith(f"low10pct-seed{seed}")
        assert dataset.info["low_data"] == {"fraction": 0.1, "seed": seed}
        assignment = resolve_splits(dataset, tmp_path / "r")
        assert "low_data(fraction=0.1,seed=" in assignment.source
        train = set(assignment.indices("train"))
        assert train <= set(full.indices("train"))  # drawn from train only
        assert np.array_equal(assignment.indices("val"), full.indices("val"))
        assert np.array_equal(assignment.indices("test"), full.indices("test"))
        counts = np.bincount(dataset.labels[list(train)], minlength=2)
        full_counts = np.bincount(dataset.labels[full.indices("train")], minlength=2)
        assert list(counts) == [max(1, round(0.1 * n)) for n in full_counts]  # no groups here: exact quotas
        subsets[seed] = train
        again = resolve_splits(build_isic2019(root, {**options, "low_data": 0.1, "low_data_seed": seed}), tmp_path / "r2")
        assert set(again.indices("train")) == train  # a recorded seed reproduces the subset
    assert len({frozenset(s) for s in subsets.values()}) > 1
    with pytest.raises(DatasetError, match="low_data must be"):
        build_isic2019(root, {"low_data": "150pct"})


def test_isic2020_patient_grouped(tmp_path: Path):
    root = tmp_path / "isic2020"
    header = ["image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis",
              "benign_malignant", "target"]
    rows = []
    for number in range(40):
        patient = f"IP_{number // 3:07d}"  # three images per patient
        target = int(number % 4 == 0)
        rows.append([f"ISIC_{number:07d}", patient, ["male", "female", ""][number % 3], str(20 + number),
                     ["torso", "lower extremity", ""][number % 3], "melanoma" if target else "nevus",
                     "malignant" if target else "benign", target])
        write_image(root / "jpeg" / "train" / f"ISIC_{number:07d}.jpg", number)
    write_csv(root / "train.csv", header, rows)
    dataset = build_isic2020(root, {})
    assert dataset.classes == ["benign", "melanoma"] and dataset.info["primary_metric"] == "auroc"
    assert dataset.class_counts() == {"benign": 30, "melanoma": 10}
    assert dataset.groups[0] == dataset.groups[2] == "IP_0000000"
    assert dataset.subgroups()["sex"][2] is None or pd.isna(dataset.subgroups()["sex"][2])
    assert dataset.subgroups()["age"][0] == "20-39"
    no_group_in_two_splits(dataset, resolve_splits(dataset, tmp_path / "r", seed=3).split)
    rows[1][7] = "2"
    write_csv(root / "train.csv", header, rows)
    with pytest.raises(DatasetError, match="'target' has values"):
        build_isic2020(root, {})
