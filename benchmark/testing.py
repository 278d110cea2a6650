"""Conformance kit for plugin authors: run the harness's contract checks on your encoder or dataset.

    from benchmark.testing import check_encoder, check_dataset
    check_encoder(my_spec)            # raises AssertionError with the broken rule
    check_dataset(my_dataset_spec, root)
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from datasets.base import DatasetSpec, ImageDataset
from pretrained.encoder import Encoder, EncoderSpec, GlobalAvgPool, LoadOptions
from pretrained.preprocessing import Preprocessing


def check_encoder(spec: EncoderSpec, options: LoadOptions | None = None, batch: int = 2) -> Encoder:
    """Build ``spec`` and check the Encoder contract on a [batch, 3, S, S] input; returns the encoder."""
    assert isinstance(spec, EncoderSpec), f"expected an EncoderSpec, got {type(spec).__name__}"
    encoder = spec.build(options or LoadOptions())
    assert isinstance(encoder, Encoder), f"{spec.name}: build() must return an Encoder, got {type(encoder).__name__}"
    assert encoder.feature_dim == spec.feature_dim, (
        f"{spec.name}: spec says feature_dim {spec.feature_dim}, encoder says {encoder.feature_dim}")
    assert isinstance(encoder.preprocessing, Preprocessing), f"{spec.name}: preprocessing must be a Preprocessing"
    assert "weights_sha256" in encoder.provenance, f"{spec.name}: provenance needs 'weights_sha256'"
    size = encoder.preprocessing.input_size
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=generator)
    encoder.eval()
    with torch.inference_mode():
        features = encoder(encoder.preprocessing.normalize(x))
    assert features.shape == (batch, spec.feature_dim), (
        f"{spec.name}: features shape {tuple(features.shape)}, expected ({batch}, {spec.feature_dim})")
    assert torch.isfinite(features).all(), f"{spec.name}: non-finite features"
    return encoder


def check_dataset(spec: DatasetSpec, root=None, options: dict | None = None, n_images: int = 3) -> ImageDataset:
    """Build ``spec`` and check the Dataset contract (columns, labels, loadable RGB images)."""
    dataset = spec.build(root, options or {})
    assert isinstance(dataset, ImageDataset), f"{spec.name}: build() must return an ImageDataset"
    assert len(dataset) > 0, f"{spec.name}: no images"
    if dataset.is_multilabel:  # a 0/1 [N, L] finding matrix, one column per class name
        assert dataset.label_matrix.shape == (len(dataset), dataset.num_classes), f"{spec.name}: label matrix shape"
    else:
        labels = dataset.labels
        assert labels.min() >= 0 and labels.max() < dataset.num_classes, f"{spec.name}: labels out of range"
    for index in np.linspace(0, len(dataset) - 1, min(n_images, len(dataset))).astype(int):
        image = dataset.load_image(int(index))
        assert image.mode == "RGB", f"{spec.name}: image {index} is {image.mode}, expected RGB"
    assert len(dataset.manifest_hash()) == 64
    return dataset


class TinyConvTrunk(nn.Module):
    """A 2-layer CNN (for tests and examples): [N, 3, H, W] -> [N, width, H/4, W/4]."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def tiny_encoder_spec(name: str = "tiny-cnn", width: int = 16, input_size: int = 32, seed: int = 0) -> EncoderSpec:
    """A fast random CNN encoder spec, for tests and as a plugin example."""
    from pretrained.architectures import state_fingerprint

    def build(options: LoadOptions) -> Encoder:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            trunk = TinyConvTrunk(width)
        encoder = Encoder(name, trunk, GlobalAvgPool(), width,
                          Preprocessing(input_size=input_size, resize_size=input_size, interpolation="bilinear"),
                          {"source": "random-init", "architecture": "tiny-cnn", "init_seed": seed})
        encoder.provenance["weights_sha256"] = state_fingerprint(encoder)
        return encoder

    return EncoderSpec(name=name, architecture="tiny-cnn", feature_dim=width, build=build, kind="random",
                       description="2-layer random CNN for tests")
