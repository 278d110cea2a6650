"""Shared fixtures: a tiny random CNN encoder and a small synthderm, registered for one test."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmark.testing import tiny_encoder_spec
from datasets.base import DatasetSpec
from datasets.registry import DATASETS
from datasets.synthderm import build_synthderm
from pretrained.registry import ENCODERS

MINI = {"n_lesions": 100, "image_size": 32, "seed": 3}


@pytest.fixture
def tiny_encoder():
    """Registers 'tiny-cnn' (16-d random CNN at 32 px) for the duration of a test."""
    spec = tiny_encoder_spec()
    ENCODERS.add(spec.name, spec, origin="test")
    yield spec
    ENCODERS.remove(spec.name)


@pytest.fixture
def mini_synthderm():
    """Registers 'synthderm-mini' (~240 images at 32 px) for the duration of a test."""
    spec = DatasetSpec(name="synthderm-mini", build=lambda root, options: _mini(options), needs_root=False,
                       description="small synthderm for tests")
    DATASETS.add(spec.name, spec, origin="test")
    yield spec
    DATASETS.remove(spec.name)


def _mini(options: dict):
    dataset = build_synthderm(None, {**MINI, **options})
    dataset.name = "synthderm-mini"
    return dataset


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    return tmp_path / "results"
