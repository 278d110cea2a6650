"""Chest X-ray pneumonia, ChestX-ray14 and MedMNIST npz loaders on tiny replicas."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from datasets.base import ArrayImageDataset, DatasetError
from datasets.chest_xray_pneumonia import build_chest_xray_pneumonia, patient_id
from datasets.chestxray14 import build_chestxray14
from datasets.download import md5_of
from datasets.medmnist import build_medmnist
from datasets.medmnist_synthetic import write_medmnist_npz
from datasets.splits import resolve_splits, stratification_labels
from tests.datasets.replicas import no_group_in_two_splits, write_csv, write_image


def make_kermany(root: Path) -> None:
    counts = {"train": 10, "val": 2, "test": 4}
    for split, n in counts.items():
        for k in range(n):  # two images per patient; patient numbers differ between the split folders
            write_image(root / "chest_xray" / split / "PNEUMONIA" / f"person{k // 2 + 10 * len(split)}_bacteria_{k}.jpeg",
                        k, mode="L")
            write_image(root / "chest_xray" / split / "NORMAL" / f"IM-{k // 2 + 100 * len(split):04d}-000{k % 2}.jpeg",
                        50 + k, mode="L")
    (root / "chest_xray" / "train" / "NORMAL" / ".DS_Store").write_bytes(b"junk")


def test_chest_xray_pneumonia_official_and_carved_val(tmp_path: Path):
    assert patient_id("person1_bacteria_1.jpeg") == "person1"
    assert patient_id("NORMAL2-IM-1427-0001.jpeg") == "normal2-im-1427"
    assert patient_id("IM-0115-0001.jpeg") == "im-0115"
    make_kermany(tmp_path)
    dataset = build_chest_xray_pneumonia(tmp_path, {})  # the folder holding chest_xray/
    assert dataset.classes == ["NORMAL", "PNEUMONIA"] and dataset.info["primary_metric"] == "auroc"
    sizes = dataset.table["split"].value_counts().to_dict()
    assert sizes == {"train": 20, "val": 4, "test": 8}
    assert dataset.load_image(0).mode == "RGB"  # greyscale X-rays are served as RGB
    assert resolve_splits(dataset, tmp_path / "r").source == "official"
    carved = build_chest_xray_pneumonia(tmp_path / "chest_xray", {"val": "carve"})
    assert carved.name == "chest-xray-pneumonia-val-carved"
    assert "val" not in set(carved.table["split"])
    assignment = resolve_splits(carved, tmp_path / "r", seed=0)
    assert len(assignment.indices("val")) > 0 and len(assignment.indices("test")) == 8
    no_group_in_two_splits(carved, assignment.split)
    assert set(carved.table["image_id"][assignment.indices("val")]).isdisjoint(
        set(carved.table["image_id"][carved.table["split"] == "test"]))


def test_chestxray14_single_label_subset(tmp_path: Path):
    header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
              "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]
    findings = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumothorax",
                "No Finding", "Pneumonia", "Effusion|Mass"]
    rows, train, test = [], [], []
    for number in range(40):
        name = f"{number // 2:08d}_{number % 2:03d}.png"
        rows.append([name, findings[number % 10], str(number % 2), str(number // 2), str(20 + number), "MF"[number % 2],
                     "PA" if number % 3 else "AP", "1024", "1024", "0.14", "0.14"])
        write_image(tmp_path / "cxr" / f"images_{1 + number % 2:03d}" / "images" / name, number, mode="L")
        (test if number // 2 >= 15 else train).append(name)
    write_csv(tmp_path / "cxr" / "Data_Entry_2017.csv", header, rows)
    dataset = build_chestxray14(tmp_path / "cxr", {})
    assert dataset.classes == findings[:7]
    assert len(dataset) == 28 and dataset.info["rows_in_csv"] == 40  # No Finding, Pneumonia, multi-label dropped
    assert dataset.class_counts() == {f: 4 for f in findings[:7]}
    assert set(dataset.subgroups()["sex"]) == {"male", "female"} and dataset.subgroups()["view"][0] == "ap"
    assert "split" not in dataset.table.columns
    (tmp_path / "cxr" / "train_val_list.txt").write_text("\n".join(train) + "\n")
    (tmp_path / "cxr" / "test_list.txt").write_text("\n".join(test) + "\n")
    official = build_chestxray14(tmp_path / "cxr", {})
    assert official.info["official_split"] and set(official.table["split"]) == {"train", "test"}
    no_group_in_two_splits(official, official.table["split"].to_numpy())


def write_medmnist(path: Path, n: dict, labels_shape: str = "n1", n_labels: int = 2, rgb: bool = False,
                   size: int = 28) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in n.items():
        shape = (count, size, size, 3) if rgb else (count, size, size)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        labels = np.arange(count) % n_labels
        if labels_shape == "n1":
            labels = labels[:, None]
        elif labels_shape == "multi":
            labels = rng.integers(0, 2, (count, 14))
        arrays[f"{split}_labels"] = labels.astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def test_medmnist_label_shapes_and_md5_report(tmp_path: Path, caplog):
    sizes = {"train": 6, "val": 2, "test": 4}
    write_medmnist(tmp_path / "a" / "breastmnist.npz", sizes, "n1")
    write_medmnist(tmp_path / "b" / "breastmnist.npz", sizes, "n")
    one, flat = build_medmnist("breastmnist", tmp_path / "a", {}), build_medmnist("breastmnist", tmp_path / "b", {})
    assert np.array_equal(one.labels, flat.labels) and list(one.labels[:3]) == [0, 1, 0]
    assert one.classes == ["malignant", "normal, benign"] and one.info["primary_metric"] == "auroc"
    assert one.table["split"].value_counts().to_dict() == sizes
    assert one.info["md5"]["status"] == "mismatch"  # a test-made file is not the published one...
    assert one.info["md5"]["actual"] == md5_of(tmp_path / "a" / "breastmnist.npz")
    assert "published md5" in caplog.text  # ...and that is reported, not hidden
    write_medmnist(tmp_path / "a" / "dermamnist_64.npz", sizes, "n1", n_labels=7, rgb=True, size=64)
    derma = build_medmnist("dermamnist", tmp_path / "a", {"size": 64})
    assert derma.name == "medmnist:dermamnist-64" and derma.load_image(0).size == (64, 64)
    assert derma.info["primary_metric"] == "balanced_accuracy" and derma.num_classes == 7
    with pytest.raises(DatasetError, match="data download medmnist:dermamnist --size 128"):
        build_medmnist("dermamnist", tmp_path / "a", {"size": 128})
    with pytest.raises(DatasetError, match="size must be one of"):
        build_medmnist("dermamnist", tmp_path / "a", {"size": 32})


def test_chestmnist_multilabel_contract(tmp_path: Path):
    write_medmnist_npz(tmp_path, "chestmnist", (8, 4, 4))
    multi = build_medmnist("chestmnist", tmp_path / "chestmnist.npz", {})
    assert multi.is_multilabel and multi.info["multilabel"] and multi.label_matrix.shape == (16, 14)
    assert multi.targets is multi.label_matrix and multi.label_matrix.dtype == np.uint8
    assert multi.class_counts()["atelectasis"] == int(multi.label_matrix[:, 0].sum())
    with pytest.raises(DatasetError, match="multi-label .* task=<finding>"):
        multi.labels
    assignment = resolve_splits(multi, tmp_path / "r")  # the official splits work
    assert assignment.source == "official" and len(assignment.indices("test")) == 4
    effusion = build_medmnist("chestmnist", tmp_path / "chestmnist.npz", {"task": "effusion"})
    assert effusion.name == "medmnist:chestmnist-effusion" and effusion.classes == ["no effusion", "effusion"]
    assert np.array_equal(effusion.labels, multi.label_matrix[:, 2]) and not effusion.is_multilabel
    with pytest.raises(DatasetError, match="no task 'lung'"):
        build_medmnist("chestmnist", tmp_path / "chestmnist.npz", {"task": "lung"})
    # a finding constant within a split would have an undefined AUC there: refused by name
    write_medmnist(tmp_path / "bad" / "chestmnist.npz", {"train": 8, "val": 3, "test": 5}, "multi")
    with pytest.raises(DatasetError, match=r"finding\(s\) \['edema'\] have only positive or only negative images "
                                           r"in the 'val' split"):
        resolve_splits(build_medmnist("chestmnist", tmp_path / "bad", {}), tmp_path / "r")


def test_multilabel_dataset_contract_and_generated_splits(tmp_path: Path):
    rng = np.random.default_rng(0)
    n = 60
    matrix = (rng.random((n, 3)) < 0.4).astype(np.uint8)
    matrix[:6] = np.eye(3, dtype=np.uint8)[np.arange(6) % 3]
    table = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "group": [f"p{k // 2}" for k in range(n)]})
    images = rng.integers(0, 255, (n, 8, 8), dtype=np.uint8)
    dataset = ArrayImageDataset("toy-multi", table, ["a", "b", "c"], images, label_matrix=matrix)
    assert stratification_labels(dataset).tolist()[:6] == [0, 1, 2, 0, 1, 2]
    rarest = np.argsort(matrix.sum(0), kind="stable")
    assert all(stratification_labels(dataset)[k] == next((f for f in rarest if matrix[k, f]), 3) for k in range(n))
    assignment = resolve_splits(dataset, tmp_path / "r", seed=0)
    no_group_in_two_splits(dataset, assignment.split)
    written = pd.read_csv(assignment.source.removeprefix("file:"), keep_default_na=False)
    assert written["label"].tolist()[:3] == ["a", "b", "c"] and "|" in "".join(written["label"])
    flipped = matrix.copy()
    flipped[0, 2] = 1
    other = ArrayImageDataset("toy-multi", table, ["a", "b", "c"], images, label_matrix=flipped)
    assert other.manifest_hash() != dataset.manifest_hash()  # the label matrix is part of the manifest
    with pytest.raises(DatasetError, match="expected \\(60, 2\\)"):
        ArrayImageDataset("toy-multi", table, ["a", "b"], images, label_matrix=matrix)
    with pytest.raises(DatasetError, match="only 0 and 1"):
        ArrayImageDataset("toy-multi", table, ["a", "b", "c"], images, label_matrix=matrix * 2)
    with pytest.raises(DatasetError, match="lacks columns \\['label'\\]"):  # single-label datasets still need it
        ArrayImageDataset("toy", table, ["a", "b", "c"], images)
