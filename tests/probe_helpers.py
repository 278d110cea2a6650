"""Small known-answer encoders and datasets for the probe tests."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from benchmark.runner import Cell, Runner, RunSettings
from benchmark.testing import TinyConvTrunk
from datasets.base import ArrayImageDataset, DatasetSpec
from datasets.registry import DATASETS
from evaluators.base import ExtractionSettings
from pretrained.architectures import state_fingerprint
from pretrained.encoder import Encoder, GlobalAvgPool
from pretrained.preprocessing import Preprocessing

PRE32 = Preprocessing(input_size=32, resize_size=32, interpolation="bilinear")


def tiny_trunk(seed: int = 0, width: int = 16) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyConvTrunk(width)


class RotationAveraged(Encoder):
    """Invariant to rot90 by construction: f(x) = mean over k of pool(trunk(rot90(x, k)))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.pool(self.trunk(torch.rot90(x, k, dims=(2, 3)))) for k in range(4)]).mean(0)


class TopHalf(nn.Module):
    """Zeroes the bottom half of the input before the trunk: the encoder only sees the top half."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.inner = trunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.ones_like(x)
        mask[..., x.shape[-2] // 2:, :] = 0
        return self.inner(x * mask)


def make_encoder(kind: str = "plain", seed: int = 0, preprocessing: Preprocessing = PRE32) -> Encoder:
    trunk = tiny_trunk(seed)
    if kind == "top-half":
        trunk = TopHalf(trunk)
    cls = RotationAveraged if kind == "rotation-averaged" else Encoder
    encoder = cls(f"test-{kind}", trunk, GlobalAvgPool(), 16, preprocessing, {"source": "test"})
    encoder.provenance["weights_sha256"] = state_fingerprint(encoder)
    return encoder.eval()


def smooth_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 [n, size, size, 3] random blobs (low-frequency, so small geometric changes matter little)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(n, 8, 8, 3))
    images = np.repeat(np.repeat(coarse, size // 8, axis=1), size // 8, axis=2)
    noise = rng.normal(0, 20, size=images.shape)
    return np.clip(images + noise, 0, 255).astype(np.uint8)


class BoxedDataset(ArrayImageDataset):
    """An array dataset whose lesion box is the top-left quarter of each image."""

    def lesion_box(self, index: int):
        height, width = self.images.shape[1:3]
        return (0.0, 0.0, width / 2, height / 2)


def array_dataset(n: int = 40, size: int = 32, seed: int = 0, groups_of: int = 1, boxed: bool = False) -> ArrayImageDataset:
    images = smooth_images(n, size, seed)
    table = pd.DataFrame({"image_id": [f"im{i:03d}" for i in range(n)], "label": [i % 2 for i in range(n)],
                          "group": [f"g{i // groups_of:03d}" for i in range(n)]})
    cls = BoxedDataset if boxed else ArrayImageDataset
    return cls("test-array", table, ["a", "b"], images)


def registered_array_dataset(name: str, **kwargs) -> Iterator[None]:
    """Generator for a fixture: ``array_dataset(**kwargs)`` registered as ``name`` for one test."""
    def build(root, options):
        dataset = array_dataset(**kwargs)
        dataset.name = name
        return dataset
    DATASETS.add(name, DatasetSpec(name=name, build=build, needs_root=False), origin="test")
    yield
    DATASETS.remove(name)


def run_cell(results_dir: Path, encoder: str, dataset: str, evaluator: str, overrides: dict | None = None,
             preset: str | None = None):
    settings = RunSettings(results_dir=results_dir,
                           extraction=ExtractionSettings(device=torch.device("cpu"), cache_dir=Path(results_dir) / "cache",
                                                         batch_size=64, num_workers=0))
    return Runner(settings).run(Cell(encoder, dataset, evaluator, preset=preset, overrides=overrides or {}))


def one_thread():
    """Generator for an autouse fixture: tiny CPU workloads run fastest (and steadiest on a shared
    machine) on one intra-op thread; the previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
