from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from datasets.base import DatasetError
from datasets.generic import build_csv_dataset, build_folder_dataset


def _image(path, value: int = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def test_csv_dataset_labels_groups_subgroups_and_splits(tmp_path):
    lines = ["image,label,group,split,sex"]
    for i in range(6):
        _image(tmp_path / "img" / f"{i}.png", i * 10)
        lines.append(f"img/{i}.png,{'mel' if i % 2 else 'nv'},p{i // 2},{['train', 'val', 'test'][i // 2]},{'mf'[i % 2]}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    dataset = build_csv_dataset(tmp_path, {"subgroups": "sex"})
    assert dataset.classes == ["mel", "nv"]
    assert list(dataset.labels) == [1, 0, 1, 0, 1, 0]
    assert list(dataset.groups) == ["p0", "p0", "p1", "p1", "p2", "p2"]
    assert dataset.has_official_splits and dataset.subgroup_columns == ("sex",)
    assert dataset.load_image(3).getpixel((0, 0)) == (30, 30, 30)


@pytest.mark.parametrize("content,message", [
    ("image,label\n", "no rows"),
    ("file,label\na.png,x\n", "lacks column(s) ['image']"),
    ("image,label\na.png,\n", "rows [2] have an empty"),
    ("image,label,split\na.png,x,training\n", "use train, val or test"),
])
def test_malformed_csv_messages(tmp_path, content, message):
    path = tmp_path / "labels.csv"
    path.write_text(content)
    with pytest.raises(DatasetError) as info:
        build_csv_dataset(path, {})
    assert message in str(info.value)


def test_csv_missing_file_and_subgroup(tmp_path):
    with pytest.raises(DatasetError, match="CSV file not found"):
        build_csv_dataset(tmp_path / "nope.csv", {})
    (tmp_path / "labels.csv").write_text("image,label\na.png,x\n")
    with pytest.raises(DatasetError, match="no subgroup column 'age'"):
        build_csv_dataset(tmp_path, {"subgroups": "age"})


def test_folder_dataset_with_and_without_splits(tmp_path):
    for cls in ("normal", "pneumonia"):
        for i in range(2):
            _image(tmp_path / "flat" / cls / f"{i}.jpg")
            for split in ("train", "test"):
                _image(tmp_path / "split" / split / cls / f"{i}.png")
    flat = build_folder_dataset(tmp_path / "flat", {})
    assert flat.classes == ["normal", "pneumonia"] and len(flat) == 4 and not flat.has_official_splits
    split = build_folder_dataset(tmp_path / "split", {})
    assert split.has_official_splits and set(split.table["split"]) == {"train", "test"}
    with pytest.raises(DatasetError, match="no images found"):
        build_folder_dataset(_empty(tmp_path), {})


def _empty(tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    return path
