"""Helpers for evaluator tests: synthetic feature contexts and one-cell runs on tiny data."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.features import Features
from benchmark.runner import Cell, Runner, RunSettings
from datasets.base import ArrayImageDataset
from datasets.splits import SplitAssignment, grouped_stratified_split
from evaluators.base import EvalContext, ExtractionSettings
from pretrained.encoder import LoadOptions


def gaussian_features(n_per_class: int, n_classes: int, dim: int = 16, separation: float = 10.0,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class-conditional Gaussian features [n, dim] and labels [n].

    The class means (norm ``separation``) are fixed for a given (n_classes, dim); ``seed`` only
    changes the unit-variance noise, so several calls give train/val/test of one distribution.
    """
    means = np.random.default_rng(1234 + n_classes).normal(size=(n_classes, dim))
    rng = np.random.default_rng(seed)
    means *= separation / np.linalg.norm(means, axis=1, keepdims=True)
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = means[y] + rng.normal(size=(len(y), dim))
    return x.astype(np.float32), y


@dataclass
class _StubDataset:
    name: str
    classes: list[str]
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subgroups(self, indices=None) -> dict:
        return {}


class FeatureContext:
    """The part of :class:`EvalContext` that feature-based evaluators use, over given arrays."""

    def __init__(self, splits: dict[str, tuple[np.ndarray, np.ndarray]], n_classes: int, artifacts_dir: Path,
                 seed: int = 0):
        self.dataset = _StubDataset("synthetic", [f"c{i}" for i in range(n_classes)])
        self.device, self.seed, self.artifacts_dir = torch.device("cpu"), seed, Path(artifacts_dir)
        self._features, start = {}, 0
        for name, (x, y) in splits.items():
            indices = np.arange(start, start + len(y))
            start += len(y)
            ids = np.array([f"{name}{i}" for i in indices])
            self._features[name] = Features(x, y, ids, ids, indices, {})

    def features(self, split: str) -> Features:
        return self._features[split]

    def primary_metric(self, default: str = "balanced_accuracy") -> str:
        return default

    def feature_cost(self) -> dict:
        return {}


@pytest.fixture
def feature_context(tmp_path):
    """factory(train, val, test) -> FeatureContext; each split an (x, y) pair."""
    def make(train, val, test, n_classes, seed=0):
        return FeatureContext({"train": train, "val": val, "test": test}, n_classes, tmp_path / "artifacts", seed)
    return make


@pytest.fixture
def run_cell(tiny_encoder, mini_synthderm, results_dir, session_tmp):
    """run(evaluator, preset=None, **overrides) -> ResultRecord for tiny-cnn on synthderm-mini."""
    def run(evaluator: str, preset: str | None = None, results: Path | None = None, **overrides):
        settings = RunSettings(results_dir=results or results_dir, overwrite=True,
                               extraction=ExtractionSettings(device=torch.device("cpu"), num_workers=0,
                                                             cache_dir=Path(session_tmp) / "feature-cache"))
        return Runner(settings).run(Cell("tiny-cnn", "synthderm-mini", evaluator, preset=preset,
                                         overrides=overrides)).record
    return run


def colour_dataset(n_per_class: int = 60, size: int = 16, shuffle_labels: bool = False, seed: int = 0) -> ArrayImageDataset:
    """Two classes that differ only in colour (red vs blue noise images): trivially separable."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n_per_class)
    images = rng.integers(0, 90, size=(len(labels), size, size, 3)).astype(np.uint8)
    images[labels == 0, :, :, 0] += 150
    images[labels == 1, :, :, 2] += 150
    if shuffle_labels:
        labels = rng.permutation(labels)
    table = pd.DataFrame({"image_id": [f"img{i}" for i in range(len(labels))], "label": labels,
                          "group": [f"img{i}" for i in range(len(labels))]})
    return ArrayImageDataset("colours" + ("-shuffled" if shuffle_labels else ""), table, ["red", "blue"], images)


def image_context(dataset: ArrayImageDataset, encoder_spec, artifacts_dir: Path, seed: int = 0) -> EvalContext:
    """An :class:`EvalContext` over ``dataset`` with a grouped stratified 60/15/25 split."""
    split = grouped_stratified_split(dataset.labels, dataset.groups, {"train": 0.6, "val": 0.15, "test": 0.25}, seed)
    splits = SplitAssignment(split, "generated", "test")
    return EvalContext(encoder_spec, LoadOptions(), dataset, splits,
                       ExtractionSettings(device=torch.device("cpu"), cache_dir=None, num_workers=0),
                       artifacts_dir, seed=seed)


@pytest.fixture(scope="module")
def single_torch_thread():
    """One torch thread for a module of tiny solver problems (no oversubscription on shared CPUs)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
