from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from datasets.base import ArrayImageDataset, DatasetError
from datasets.splits import check_splits, grouped_stratified_split, resolve_splits


def _toy(n_groups: int = 120, seed: int = 0, n_classes: int = 4):
    rng = np.random.default_rng(seed)
    group_labels = rng.choice(n_classes, size=n_groups, p=[0.55, 0.25, 0.12, 0.08][:n_classes])
    sizes = rng.integers(1, 5, size=n_groups)
    labels = np.repeat(group_labels, sizes)
    groups = np.repeat([f"g{i}" for i in range(n_groups)], sizes)
    return labels, groups


def _dataset(labels, groups, name="toy") -> ArrayImageDataset:
    table = pd.DataFrame({"image_id": [f"im{i}" for i in range(len(labels))], "label": labels, "group": groups})
    images = np.zeros((len(labels), 4, 4, 3), dtype=np.uint8)
    return ArrayImageDataset(name, table, [f"c{i}" for i in range(labels.max() + 1)], images)


def test_groups_never_cross_and_classes_stratified():
    labels, groups = _toy()
    split = grouped_stratified_split(labels, groups, {"train": 0.6, "val": 0.15, "test": 0.25}, seed=0)
    frame = pd.DataFrame({"g": groups, "s": split, "y": labels})
    assert frame.groupby("g")["s"].nunique().max() == 1
    for name in ("train", "val", "test"):
        assert set(frame[frame.s == name].y) == set(labels), name
    shares = frame["s"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.6) < 0.08 and abs(shares["test"] - 0.25) < 0.08


def test_split_is_seeded():
    labels, groups = _toy()
    fractions = {"train": 0.6, "val": 0.15, "test": 0.25}
    a = grouped_stratified_split(labels, groups, fractions, seed=1)
    b = grouped_stratified_split(labels, groups, fractions, seed=1)
    c = grouped_stratified_split(labels, groups, fractions, seed=2)
    assert (a == b).all() and not (a == c).all()


def test_split_file_written_and_reused(tmp_path):
    labels, groups = _toy()
    dataset = _dataset(labels, groups)
    first = resolve_splits(dataset, tmp_path, seed=0)
    assert first.source.startswith("file:")
    files = list((tmp_path / "splits").glob("*.csv"))
    assert len(files) == 1
    written = pd.read_csv(files[0])
    assert list(written.columns) == ["image_id", "group", "label", "split"]
    again = resolve_splits(dataset, tmp_path, seed=0)
    assert (again.split == first.split).all() and again.sha256 == first.sha256


def test_user_split_file_validated(tmp_path):
    labels, groups = _toy()
    dataset = _dataset(labels, groups)
    path = tmp_path / "mine.csv"
    pd.DataFrame({"image_id": dataset.ids[:10], "split": "train"}).to_csv(path, index=False)
    with pytest.raises(DatasetError, match="does not cover"):
        resolve_splits(dataset, tmp_path, split_file=path)
    pd.DataFrame({"image_id": dataset.ids, "split": "training"}).to_csv(path, index=False)
    with pytest.raises(DatasetError, match="unknown split names"):
        resolve_splits(dataset, tmp_path, split_file=path)


def test_empty_split_and_absent_class_are_clear_errors():
    labels, groups = _toy()
    dataset = _dataset(labels, groups)
    split = np.array(["train"] * len(labels), dtype=object)
    with pytest.raises(DatasetError, match="'val' split is empty"):
        check_splits(dataset, split)
    split = grouped_stratified_split(labels, groups, {"train": 0.6, "val": 0.15, "test": 0.25}, seed=0)
    split[(labels == 3) & (split == "test")] = "train"
    with pytest.raises(DatasetError, match=r"class\(es\) \['c3'\] absent from the 'test' split"):
        check_splits(dataset, split)


def test_group_in_two_splits_is_rejected():
    labels, groups = _toy()
    dataset = _dataset(labels, groups)
    split = grouped_stratified_split(labels, groups, {"train": 0.6, "val": 0.15, "test": 0.25}, seed=0)
    multi = pd.Series(groups).value_counts()
    leaky = multi[multi > 1].index[0]
    rows = np.flatnonzero(groups == leaky)
    split[rows[0]] = "test" if split[rows[1]] != "test" else "train"
    with pytest.raises(DatasetError, match="more than one split"):
        check_splits(dataset, split)
