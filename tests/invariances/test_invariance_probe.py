"""Known answers of the invariance probe, and the invariance / multiview evaluators end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmark.features import extract_features
from benchmark.leaderboard import build_leaderboard
from datasets.base import DatasetError, DatasetSpec
from datasets.registry import DATASETS
from invariances.multiview import different_group_pairs, same_group_pairs
from invariances.probe import run_invariance
from invariances.transforms import ViewGeometry, build_grids
from invariances.whitening import Whitening
from tests.probe_helpers import array_dataset, make_encoder, run_cell, one_thread

single_thread = pytest.fixture(autouse=True)(one_thread)


def _probe(encoder, dataset, names, k):
    features = extract_features(encoder, dataset, num_workers=0)
    whitening = Whitening.fit(features.x)
    rows = np.arange(6)
    return run_invariance(encoder, dataset, rows, build_grids(names, k), whitening, ViewGeometry(encoder.preprocessing),
                          torch.device("cpu"), chunk=4)


def test_rotation_invariant_encoder_scores_one_and_plain_encoder_lower():
    dataset = array_dataset(40)
    invariant = _probe(make_encoder("rotation-averaged"), dataset, ["rotation"], 4).scores["rotation"]
    plain = _probe(make_encoder("plain"), dataset, ["rotation"], 4).scores["rotation"]
    assert invariant.grid.active == [1, 2, 3]
    np.testing.assert_allclose(invariant.similarity, 1.0, atol=1e-5)  # identity column included: also 1
    np.testing.assert_allclose(invariant.per_image("distance"), 0.0, atol=1e-3)
    assert plain.per_image().mean() < 0.95
    assert plain.per_image().mean() < invariant.per_image().mean() - 0.05


def test_identity_parameter_is_excluded_from_the_mean():
    scores = _probe(make_encoder("plain"), array_dataset(40), ["hflip"], 2).scores["hflip"]
    np.testing.assert_allclose(scores.similarity[:, 0], 1.0, atol=1e-6)  # the identity (no flip) point
    np.testing.assert_allclose(scores.distance[:, 0], 0.0, atol=1e-4)  # batch-size rounding only
    np.testing.assert_allclose(scores.per_image(), scores.similarity[:, 1])  # only the flipped view counts
    assert (scores.similarity[:, 1] < 0.999).all()


def test_multiview_pairs_are_same_group_and_reference_pairs_are_not():
    groups = np.array(["a", "a", "b", "b", "b", "c", "d", "d"])
    labels = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    pairs = same_group_pairs(groups, labels, np.arange(8), seed=0, max_pairs=None)
    assert {groups[p[0]] for p in pairs} == {"a", "b"}  # c has one image; d's two images differ in label
    assert all(groups[p[0]] == groups[p[1]] and p[0] != p[1] and labels[p[0]] == labels[p[1]] for p in pairs)
    assert len(same_group_pairs(groups, labels, np.arange(8), 0, None, same_label_only=False)) == 3
    assert np.array_equal(pairs, same_group_pairs(groups, labels, np.arange(8), seed=0, max_pairs=None))
    reference = different_group_pairs(groups, np.arange(8), 10, seed=0)
    assert reference.shape == (10, 2) and all(groups[a] != groups[b] for a, b in reference)
    with pytest.raises(DatasetError, match="at least two images"):
        same_group_pairs(np.array(["a", "b"]), np.array([0, 0]), np.arange(2), 0, None)


@pytest.fixture
def probe_dataset():
    spec = DatasetSpec(name="probe-array", build=lambda root, options: _named(array_dataset(48, groups_of=3)),
                       needs_root=False)
    DATASETS.add(spec.name, spec, origin="test")
    yield spec
    DATASETS.remove(spec.name)


def _named(dataset):
    dataset.name = "probe-array"
    return dataset


def test_invariance_evaluator_record_and_leaderboard(results_dir, tiny_encoder, probe_dataset):
    options = {"transforms": ["rotation", "hflip", "brightness"], "k": 4, "num_images": 5, "chunk": 8}
    outcome = run_cell(results_dir, "tiny-cnn", "probe-array", "invariance", options)
    record = json.loads(outcome.path.read_text())
    metrics = record["metrics"]
    assert record["primary_metric"] == "mean_similarity"
    assert {"rotation", "hflip", "brightness", "rotation_distance", "mean_similarity", "mean_distance"} <= set(metrics)
    mean = np.mean([metrics[t]["value"] for t in ("rotation", "hflip", "brightness")])
    assert metrics["mean_similarity"]["value"] == pytest.approx(mean)
    assert metrics["rotation"]["n"] == 5 and metrics["rotation"]["n_params"] == 3
    lo, hi = metrics["hflip"]["ci"]
    assert lo <= metrics["hflip"]["value"] <= hi
    resolved = record["protocol"]["resolved"]
    assert resolved["grids"]["rotation"]["identity"] == [True, False, False, False]
    assert len(set(resolved["image_ids"])) == 5  # without replacement
    assert record["extra"]["encoder_facts"]["whitening"]["n_samples"] == 48
    assert record["extra"]["detail_metrics"] == ["rotation", "hflip", "brightness"]
    figure = record["extra"]["figures"][0]
    assert figure.endswith("transform_examples.png") and str(results_dir / "artifacts" / "invariance") in figure
    assert open(figure, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    tables = dict(build_leaderboard(results_dir).tables)
    detail = tables[f"invariance ({record['identity']['variant']}) on probe-array: all metrics"]
    assert list(detail.columns) == ["encoder", "rotation", "hflip", "brightness"]


def test_multiview_evaluator(results_dir, tiny_encoder, probe_dataset):
    outcome = run_cell(results_dir, "tiny-cnn", "probe-array", "multiview-invariance", {"max_pairs": 10})
    record = json.loads(outcome.path.read_text())
    assert record["primary_metric"] == "multiview_similarity"
    assert record["protocol"]["resolved"]["n_pairs"] == 10
    assert record["metrics"]["multiview_similarity"]["n"] == 10
    assert record["metrics"]["different_group_similarity"]["n"] == 10


def test_probe_protocol_hashes_do_not_depend_on_the_encoder(results_dir, tiny_encoder, probe_dataset):
    """Two encoders run under one protocol share a hash (one leaderboard column)."""
    from benchmark.testing import tiny_encoder_spec
    from pretrained.registry import ENCODERS
    other = tiny_encoder_spec(name="tiny-cnn-8", width=8, seed=1)
    ENCODERS.add(other.name, other, origin="test")
    try:
        options = {"transforms": ["hflip"], "num_images": 3}
        hashes = {json.loads(run_cell(results_dir, name, "probe-array", "invariance", options).path.read_text())["protocol_hash"]
                  for name in ("tiny-cnn", "tiny-cnn-8")}
        assert len(hashes) == 1
    finally:
        ENCODERS.remove(other.name)
