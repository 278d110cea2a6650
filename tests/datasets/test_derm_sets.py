"""PAD-UFES-20, derm7pt and Fitzpatrick17k loaders on tiny replicas of their releases."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from datasets.base import DatasetError
from datasets.derm7pt import SPLIT_FILES, build_derm7pt
from datasets.fitzpatrick17k import build_fitzpatrick17k
from datasets.pad_ufes20 import REQUIRED, build_pad_ufes20
from datasets.splits import resolve_splits
from tests.datasets.replicas import no_group_in_two_splits, truncate, write_csv, write_image

PAD_HEADER = ["patient_id", "lesion_id", "smoke", "drink", "background_father", "background_mother", "age",
              "pesticide", "gender", "skin_cancer_history", "cancer_history", "has_piped_water", "has_sewage_system",
              "fitspatrick", "region", "diameter_1", "diameter_2", "diagnostic", "itch", "grew", "hurt", "changed",
              "bleed", "elevation", "img_id", "biopsed"]
PAD_COUNTS = {"ACK": 8, "BCC": 6, "MEL": 6, "NEV": 8, "SCC": 6, "SEK": 6}


def test_pad_ufes20_tasks_groups_fitzpatrick(tmp_path: Path):
    assert set(REQUIRED) <= set(PAD_HEADER)
    root, rows, number = tmp_path / "pad", [], 0
    for dx, count in PAD_COUNTS.items():
        for k in range(count):
            patient = f"PAT_{dx}{k // 2}"  # two images per patient
            img_id = f"{patient}_{number}_{100 + number}.png"
            fitz = ["1.0", "2.0", "", "6.0"][k % 4]
            row = {c: "" for c in PAD_HEADER}
            row.update(patient_id=patient, lesion_id=str(number), age=str(40 + k), gender=["MALE", "FEMALE"][k % 2],
                       fitspatrick=fitz, region=["FACE", "CHEST"][k % 2], diagnostic=dx, img_id=img_id, biopsed="True")
            rows.append([row[c] for c in PAD_HEADER])
            write_image(root / "images" / f"imgs_part_{1 + number % 3}" / img_id, number)  # nested as in the zip
            number += 1
    write_csv(root / "metadata.csv", PAD_HEADER, rows)
    dataset = build_pad_ufes20(root, {})
    assert dataset.classes == ["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"]
    assert dataset.class_counts() == PAD_COUNTS and dataset.info["missing_images"] == 0
    assert dataset.groups[0] == dataset.groups[1] == "PAT_ACK0" != dataset.groups[2]
    subgroups = dataset.subgroups()
    assert [None if pd.isna(v) else v for v in subgroups["fitzpatrick"][:4]] == ["1", "2", None, "6"]
    assert subgroups["sex"][0] == "male" and subgroups["site"][1] == "chest"
    no_group_in_two_splits(dataset, resolve_splits(dataset, tmp_path / "r", seed=2).split)
    melanoma = build_pad_ufes20(root, {"task": "melanoma"})
    assert melanoma.classes == ["benign", "melanoma"] and melanoma.info["primary_metric"] == "auroc"
    assert melanoma.class_counts() == {"benign": 8 + 8 + 6, "melanoma": 6}
    assert set(melanoma.table["diagnostic"]) == {"ACK", "NEV", "SEK", "MEL"}


def make_derm7pt(base: Path) -> pd.DataFrame:
    header = ["case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks", "pigmentation",
              "regression_structures", "dots_and_globules", "blue_whitish_veil", "vascular_structures",
              "level_of_diagnostic_difficulty", "elevation", "location", "sex", "clinic", "derm", "management", "notes"]
    diagnoses = ["melanoma (in situ)", "clark nevus", "basal cell carcinoma", "seborrheic keratosis", "lentigo",
                 "melanoma (more than 1.5 mm)", "blue nevus", "dermatofibroma"]
    rows = []
    for case in range(16):
        clinic, derm = f"Abc/Abc{case:03d}.jpg", f"Abc/Abd{case:03d}.JPG"
        # files on disk differ in case from meta.csv (as in the release)
        write_image(base / "images" / "abc" / clinic.split("/")[1].lower(), case)
        write_image(base / "images" / "ABC" / derm.split("/")[1].upper().replace(".JPG", ".jpg"), 100 + case)
        rows.append([str(case + 1), diagnoses[case % 8], "2", "absent", "absent", "absent", "absent", "absent",
                     "absent", "absent", "low", "flat", ["back", "lower limbs"][case % 2], ["female", "male"][case % 2],
                     clinic, derm, "excision", ""])
    write_csv(base / "meta" / "meta.csv", header, rows)
    for name, indexes in (("train", range(0, 8)), ("valid", range(8, 12)), ("test", range(12, 16))):
        write_csv(base / "meta" / f"{name}_indexes.csv", ["indexes"], [[i] for i in indexes])
    return pd.DataFrame(rows, columns=header)


def test_derm7pt_variants_tasks_official_splits(tmp_path: Path):
    meta = make_derm7pt(tmp_path / "derm7pt" / "release_v0")
    dataset = build_derm7pt(tmp_path / "derm7pt", {})  # the folder holding release_v0/
    assert dataset.name == "derm7pt" and dataset.classes == ["other", "melanoma"]
    assert dataset.info["missing_images"] == 0
    assert np.array_equal(dataset.labels, meta["diagnosis"].str.startswith("melanoma").astype(int).to_numpy())
    assert dataset.path(0).name == "ABD000.jpg"  # matched case-insensitively
    assert list(dataset.table["split"][:9]) == ["train"] * 8 + ["val"]
    assert resolve_splits(dataset, tmp_path / "r").source == "official"
    assert set(dataset.subgroup_columns) == {"sex", "site"}
    clinic = build_derm7pt(tmp_path / "derm7pt" / "release_v0", {"variant": "clinic", "task": "diagnosis"})
    assert clinic.name == "derm7pt-diagnosis-clinic"
    assert clinic.classes == ["BCC", "NEV", "MEL", "MISC", "SK"]
    assert list(clinic.labels[:8]) == [2, 1, 0, 4, 3, 2, 1, 3]
    assert clinic.path(0).name == "abc000.jpg" and clinic.info["primary_metric"] == "balanced_accuracy"
    (tmp_path / "derm7pt" / "release_v0" / "meta" / "test_indexes.csv").unlink()
    with pytest.raises(DatasetError, match="all of train_indexes.csv"):
        build_derm7pt(tmp_path / "derm7pt", {})


def test_derm7pt_rows_in_no_index_csv_are_excluded_and_counted_never_a_silent_switch(tmp_path: Path, caplog):
    base = tmp_path / "derm7pt" / "release_v0"
    make_derm7pt(base)
    full = build_derm7pt(base, {})
    assert full.info["split_source"] == "index CSVs" and full.info["unindexed_rows"] == 0
    write_csv(base / "meta" / "test_indexes.csv", ["indexes"], [[i] for i in (12, 13)])  # rows 14, 15 in no index
    partial = build_derm7pt(base, {})
    assert len(partial) == 14 and partial.info["unindexed_rows"] == 2 and partial.info["rows_in_meta"] == 16
    assert partial.has_official_splits and partial.table["split"].value_counts().to_dict() == {"train": 8, "val": 4,
                                                                                                 "test": 2}
    assert "2 of 16 meta.csv rows are in no index CSV; they are excluded" in caplog.text
    assert set(partial.table["group"]) == {str(case) for case in range(1, 15)}  # cases 15, 16 dropped
    assignment = resolve_splits(partial, tmp_path / "r")
    assert assignment.source == "official" and len(assignment.indices("test")) == 2
    assert partial.manifest_hash() != full.manifest_hash()
    with pytest.raises(DatasetError, match="2 of 16 meta.csv rows are in no index CSV \\(e.g. rows \\[14, 15\\]\\)"):
        build_derm7pt(base, {"unindexed": "error"})
    generated = build_derm7pt(base, {"splits": "generated"})  # every row, generated splits, another name
    assert generated.name == "derm7pt-generated-splits" and len(generated) == 16
    assert not generated.has_official_splits and generated.info["split_source"] == "generated (splits=generated)"
    assert resolve_splits(generated, tmp_path / "r").source.startswith("file:")
    with pytest.raises(DatasetError, match="no splits 'random'"):
        build_derm7pt(base, {"splits": "random"})
    for name in SPLIT_FILES.values():
        (base / "meta" / name).unlink()
    assert build_derm7pt(base, {}).info["split_source"] == "generated (no index CSVs)"


def test_fitzpatrick17k_drops_bad_images_with_counts(tmp_path: Path):
    header = ["md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label", "nine_partition_label",
              "three_partition_label", "qc", "url", "url_alphanum"]
    root, rows = tmp_path / "fitz", []
    labels = [("psoriasis", "inflammatory", "non-neoplastic"), ("melanoma", "malignant melanoma", "malignant"),
              ("nevus", "benign dermal", "benign")]
    for number in range(18):
        md5 = f"{number:032x}"
        label = labels[number % 3]
        rows.append([md5, str([1, 2, 3, 4, 5, 6, -1][number % 7]), "3", *label, "", f"http://x/{md5}", md5])
        if number == 0:
            continue  # never downloaded
        write_image(root / "images" / f"{md5}.jpg", number, mode="L" if number in (1, 2) else "RGB",
                    size=(64, 48) if number == 4 else (12, 9))  # big enough that half keeps the header
    (root / "images" / f"{3:032x}.jpg").write_bytes(b"<html>not found</html>")
    truncate(root / "images" / f"{4:032x}.jpg")
    write_csv(root / "fitzpatrick17k.csv", header, rows)
    dataset = build_fitzpatrick17k(root, {})
    dropped = dataset.info["dropped"]
    assert (dropped["total"], dropped["missing"], dropped["non-RGB"], dropped["unreadable"]) == (4, 1, 2, 1)
    assert len(dataset) == 14 and dataset.info["rows_in_csv"] == 18
    assert dataset.classes == ["benign dermal", "inflammatory", "malignant melanoma"]
    fitz = [None if pd.isna(v) else v for v in dataset.subgroups()["fitzpatrick"]]
    kept = [n for n in range(18) if n not in (0, 1, 2, 3)]
    assert fitz == [None if n % 7 == 6 else str(n % 7 + 1) for n in kept]
    full = build_fitzpatrick17k(root, {"verify": "full", "task": "three-partition"})
    assert full.info["dropped"]["unreadable"] == 2 and len(full) == 13  # full decode also catches the truncated file
    assert full.classes == ["benign", "malignant", "non-neoplastic"]


@pytest.mark.parametrize("build, key", [("build_fitzpatrick17k", "verify"), ("build_derm7pt", "variant"),
                                        ("build_isic2019", "groups"), ("build_chest_xray_pneumonia", "val")])
def test_a_bad_option_value_lists_the_choices_before_touching_files(build, key, tmp_path):
    """Every loader validates its options through datasets.common.choose_option, before reading --root."""
    import importlib
    module_name = {"build_fitzpatrick17k": "fitzpatrick17k", "build_derm7pt": "derm7pt", "build_isic2019": "isic2019",
                   "build_chest_xray_pneumonia": "chest_xray_pneumonia"}[build]
    builder = getattr(importlib.import_module(f"datasets.{module_name}"), build)
    with pytest.raises(DatasetError, match=rf"no {key} 'bogus'. Choices: .*--dataset-option {key}=VALUE"):
        builder(tmp_path / "missing", {key: "bogus"})
