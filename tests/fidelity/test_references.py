"""The registered MedMNIST v2 2D table: equal to the curated file, complete, and the verdict rules."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from benchmark.references import (MEDMNIST_V2_METHODS, REFERENCES, best_other, compare, parse_medmnist_v2_table,
                                  reference_rows, references_for)
from datasets.registry import DATASETS

SHARED_TABLE = Path(__file__).resolve().parents[2].parent / "shared" / "references" / "medmnist_v2_2d.csv"


@pytest.mark.skipif(not SHARED_TABLE.is_file(), reason="../shared/references is not present (clean clone)")
def test_registered_values_equal_the_curated_file():
    with open(SHARED_TABLE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 84
    for row in rows:
        dataset = "medmnist:" + row["dataset"].lower()
        for metric, column in (("auroc", "auc"), ("accuracy", "acc")):
            (reference,) = references_for(dataset, row["method"], metric=metric)
            assert reference.value == float(row[column]), (dataset, row["method"], metric)
            assert reference.single_source == (row[f"{column}_two_sources"] == "no"), (dataset, row["method"], metric)
    assert len(REFERENCES) == 2 * len(rows)


def test_the_registered_table_stands_alone():
    datasets = sorted({r.dataset for r in REFERENCES})
    assert len(datasets) == 12 and all(name in DATASETS for name in datasets)
    for dataset in datasets:
        for metric in ("auroc", "accuracy"):
            assert sorted(r.model for r in references_for(dataset, metric=metric)) == sorted(MEDMNIST_V2_METHODS)
    # spot checks against the paper's table
    assert [r.value for r in references_for("medmnist:chestmnist", "ResNet-50 (224)")] == [0.773, 0.948]
    assert [r.value for r in references_for("medmnist:octmnist", "Google AutoML Vision")] == [0.963, 0.771]
    assert sum(r.single_source for r in REFERENCES) == 14
    assert {r.single_source for r in references_for("medmnist:breastmnist", "ResNet-18 (28)")} == {False}
    assert references_for("medmnist:chestmnist", "ResNet-18 (28)", metric="accuracy")[0].single_source
    # only the ResNet rows belong to the protocol we run
    assert {r.model for r in references_for(protocol="medmnist-v2")} == set(MEDMNIST_V2_METHODS[:4])
    assert references_for("medmnist:breastmnist-64") == []
    rows = reference_rows(["medmnist:breastmnist"])
    assert len(rows) == 14 and all(row["status"] == "published" for row in rows)


def test_best_other_method_is_the_max_of_the_other_rows():
    best = best_other("medmnist:breastmnist", "auroc", "ResNet-18 (28)")
    assert (best.model, best.value) == ("Google AutoML Vision", 0.919)
    best = best_other("medmnist:pathmnist", "auroc", "ResNet-50 (28)")  # 0.990 is the excluded row itself
    assert (best.model, best.value) == ("ResNet-18 (224)", 0.989)  # ties with ResNet-50 (224): the first wins


def test_table_parser_refuses_incomplete_or_bad_tables():
    header = "dataset,method,auc,acc,auc_two_sources,acc_two_sources\n"
    with pytest.raises(ValueError, match="all 7 methods"):
        parse_medmnist_v2_table(header + "PathMNIST,ResNet-18 (28),0.983,0.907,yes,yes\n")
    with pytest.raises(ValueError, match="bad auc"):
        parse_medmnist_v2_table(header + "PathMNIST,ResNet-18 (28),1.983,0.907,yes,yes\n")
    with pytest.raises(ValueError, match="unexpected or repeated"):
        parse_medmnist_v2_table(header + "PathMNIST,ResNet-34 (28),0.983,0.907,yes,yes\n")


def test_verdicts():
    assert compare([0.898, 0.917, 0.889], 0.901)["verdict"] == "reproduced"
    noisy = compare([0.80, 0.95, 0.70], 0.901)  # mean 0.817, sd 0.126: outside 0.03, inside 2 sd
    assert noisy["verdict"] == "within seed noise" and not noisy["within_tolerance"]
    assert compare([0.80, 0.81, 0.82], 0.901)["verdict"] == "lower"
    assert compare([0.99, 0.99], 0.901)["verdict"] == "higher"
    assert compare([0.86], 0.863)["verdict"] == "reproduced"  # one seed: only the tolerance can hold
