"""HAM10000 loader on a tiny replica (and on the real copy in ../shared/data when present)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from datasets.base import DatasetError
from datasets.ham10000 import build_ham10000
from datasets.splits import resolve_splits
from tests.datasets.replicas import no_group_in_two_splits


def test_dx_task_labels_groups_subgroups(ham_root: Path, tmp_path: Path):
    meta = pd.read_csv(ham_root / "HAM10000_metadata.csv")
    dataset = build_ham10000(ham_root, {})
    assert dataset.name == "ham10000"
    assert dataset.classes == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert len(dataset) == len(meta)
    expected = meta["dx"].map({c: i for i, c in enumerate(dataset.classes)}).to_numpy()
    assert np.array_equal(dataset.labels, expected)
    assert np.array_equal(dataset.groups, meta["lesion_id"].to_numpy())
    assert dataset.info["primary_metric"] == "balanced_accuracy"
    assert dataset.info["n_groups"] == meta["lesion_id"].nunique()
    subgroups = {k: [None if pd.isna(v) else v for v in values] for k, values in dataset.subgroups().items()}
    assert set(subgroups) == {"sex", "age", "site"}
    # "unknown" sex/site and empty age become None (skipped by per-subgroup metrics)
    assert subgroups["sex"] == [None if s == "unknown" else s for s in meta["sex"]]
    assert set(subgroups["site"]) - {None} == {"back", "face", "lower extremity"}
    bins = {15.0: "0-19", 25.0: "20-39", 35.0: "20-39", 45.0: "40-59", 55.0: "40-59", 65.0: "60-79", 75.0: "60-79"}
    assert subgroups["age"] == [None if pd.isna(a) else bins[a] for a in meta["age"]]
    assert dataset.load_image(0).mode == "RGB"
    split = resolve_splits(dataset, tmp_path / "results", seed=1).split
    no_group_in_two_splits(dataset, split)
    assert (tmp_path / "results" / "splits").is_dir()  # generated split saved for inspection


def test_melanoma_task_and_boxes(ham_root: Path):
    dataset = build_ham10000(ham_root, {"task": "melanoma"})
    assert dataset.name == "ham10000-melanoma"
    assert dataset.classes == ["other", "melanoma"]
    assert np.array_equal(dataset.labels, (dataset.table["dx"] == "mel").astype(int).to_numpy())
    assert dataset.info["primary_metric"] == "auroc"
    boxes = dataset.boxes(np.array([0, 1]))
    assert boxes.shape == (2, 4)
    assert np.array_equal(boxes[0], [2, 1, 10, 8])  # (left, top, right, bottom) from left/top/right/bottom columns
    relative = dataset.boxes(np.array([0]), relative=True)
    assert np.allclose(relative[0], [2 / 12, 1 / 9, 10 / 12, 8 / 9])  # replica images are 12 x 9


def test_errors_are_clear(ham_root: Path, tmp_path: Path):
    with pytest.raises(DatasetError, match="no task 'mel'"):
        build_ham10000(ham_root, {"task": "mel"})
    with pytest.raises(DatasetError, match="no option"):
        build_ham10000(ham_root, {"tsk": "melanoma"})
    with pytest.raises(DatasetError, match="HAM10000_metadata.csv"):
        build_ham10000(tmp_path, {})
    (ham_root / "HAM10000_metadata_ext.csv").unlink()
    with pytest.raises(DatasetError, match="no lesion boxes"):
        build_ham10000(ham_root, {}).boxes()


def _shared_data() -> Path:
    default = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    return Path(os.environ.get("MEDTRANSFER_SHARED_DATA", default)).resolve()


@pytest.mark.realdata
@pytest.mark.skipif(not (_shared_data() / "ham10000" / "HAM10000_metadata.csv").is_file(),
                    reason="real HAM10000 copy not present (../shared/data/ham10000 or $MEDTRANSFER_SHARED_DATA)")
def test_real_ham10000(tmp_path: Path):
    dataset = build_ham10000(_shared_data() / "ham10000", {})
    assert len(dataset) == 10015
    assert len(set(dataset.groups)) == 7470
    assert dataset.class_counts() == {"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113, "nv": 6705,
                                      "vasc": 142}
    assert dataset.info["missing_images"] == 0
    assignment = resolve_splits(dataset, tmp_path, seed=0)
    no_group_in_two_splits(dataset, assignment.split)
    assert dataset.boxes(np.array([0])).shape == (1, 4)
