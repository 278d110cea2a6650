"""A small results folder shared by the comparison, leaderboard and report tests (run once per session)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmark.runner import Cell, Runner, RunSettings
from benchmark.testing import tiny_encoder_spec
from datasets.base import DatasetSpec
from datasets.registry import DATASETS
from datasets.synthderm import build_synthderm
from evaluators.base import ExtractionSettings
from pretrained.registry import ENCODERS

ENCODER_NAMES = ("tiny-a", "tiny-b", "tiny-c")
CELLS = {"linear": {"wd_min_exp": -1, "wd_max_exp": 2, "wd_steps": 3, "max_iter": 100, "n_boot": 200}, "knn": {"ks": [5], "primary_k": 5, "n_boot": 200},
         "fewshot": {"shots": [2], "primary_shots": 2, "n_query": 3, "episodes": 60},
         "kshot-linear": {"ks": [2], "primary_k": 2, "seeds": 2, "wd_steps": 3, "max_iter": 50}}


@pytest.fixture(scope="session")
def comparison_grid(tmp_path_factory) -> Path:
    """Three tiny encoders x synthderm-cmp x four evaluators, run once per session."""
    results = tmp_path_factory.mktemp("cmp") / "results"
    for seed, name in enumerate(ENCODER_NAMES):
        ENCODERS.add(name, tiny_encoder_spec(name, seed=seed), origin="test")
    spec = DatasetSpec(name="synthderm-cmp", needs_root=False, description="test",
                       build=lambda root, options: _named(build_synthderm(None, {"n_lesions": 100, "image_size": 32, "seed": 3})))
    DATASETS.add(spec.name, spec, origin="test")
    settings = RunSettings(results_dir=results, extraction=ExtractionSettings(device=torch.device("cpu"), num_workers=0,
                                                                              cache_dir=None))
    runner = Runner(settings)
    for evaluator, overrides in CELLS.items():
        for name in ENCODER_NAMES:
            runner.run(Cell(name, "synthderm-cmp", evaluator, overrides=overrides))
    yield results
    for name in ENCODER_NAMES:
        ENCODERS.remove(name)
    DATASETS.remove(spec.name)


def _named(dataset):
    dataset.name = "synthderm-cmp"
    return dataset


