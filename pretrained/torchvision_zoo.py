"""torchvision ResNets and DenseNets: random init, and ImageNet-supervised weights from the torch cache.

ImageNet weights are taken from torchvision's weights API metadata (URL, file name) and read
from the local torch hub cache (or the medtransfer weights folders); nothing is downloaded
implicitly. A missing file gives one message naming the file, where it was looked for and its URL.
"""
from __future__ import annotations

from functools import partial

import torch
import torchvision

from pretrained.architectures import state_fingerprint, torchvision_backbone
from pretrained.checkpoints import locate, require, sha256_file, torch_hub_checkpoint_dir, weight_search_dirs
from pretrained.formats import fix_legacy_densenet_keys
from pretrained.encoder import Encoder, EncoderSpec, LoadOptions, WeightsStatus
from pretrained.preprocessing import Preprocessing
from pretrained.registry import ENCODERS
from pretrained.weights_sources import WeightsSource

# Parity with the seed studies' linear/few-shot protocols: Resize(224, bicubic) + CenterCrop(224), ImageNet stats.
IMAGENET_PREPROCESSING = Preprocessing(input_size=224, resize_size=224, interpolation="bicubic")

TORCHVISION_ARCHS = {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights",
                     "densenet121": "DenseNet121_Weights"}
FEATURE_DIMS = {"resnet18": 512, "resnet50": 2048, "densenet121": 1024}
TORCHVISION_LICENCE = "BSD-3-Clause (torchvision code); ImageNet weights for non-commercial research use"


def random_encoder(arch: str, name: str, options: LoadOptions, seed: int = 0) -> Encoder:
    """Seeded random-init encoder of a torchvision architecture."""
    trunk, pool, dim = torchvision_backbone(arch, seed=seed)
    encoder = Encoder(name, trunk, pool, dim, IMAGENET_PREPROCESSING,
                      {"source": "random-init", "architecture": arch, "init_seed": seed,
                       "torch_version": torch.__version__})
    encoder.provenance["weights_sha256"] = state_fingerprint(encoder)
    return encoder


def _imagenet_weights(arch: str) -> torchvision.models.WeightsEnum:
    return getattr(torchvision.models, TORCHVISION_ARCHS[arch]).IMAGENET1K_V1


def _imagenet_dirs(options: LoadOptions) -> list:
    return [torch_hub_checkpoint_dir(), *weight_search_dirs(options.weights_dir)]


def _how_to_get(arch: str) -> str:
    weights = _imagenet_weights(arch)
    return (f"Get it from {weights.url} and put it in the torch cache ({torch_hub_checkpoint_dir()}) "
            f"or a weights folder (--weights-dir, $MEDTRANSFER_WEIGHTS).")


def imagenet_status(arch: str, options: LoadOptions) -> WeightsStatus:
    filename = _imagenet_weights(arch).url.rsplit("/", 1)[-1]
    path = locate(filename, _imagenet_dirs(options))
    if path is None:
        return WeightsStatus(False, f"missing {filename}", how_to_get=_how_to_get(arch))
    return WeightsStatus(True, str(path), str(path))


def imagenet_encoder(arch: str, name: str, options: LoadOptions) -> Encoder:
    """torchvision ImageNet-1k supervised weights, loaded strictly minus the classifier."""
    weights = _imagenet_weights(arch)
    filename = weights.url.rsplit("/", 1)[-1]
    path = require(filename, _imagenet_dirs(options), _how_to_get(arch))
    state = torch.load(path, map_location="cpu", weights_only=True)
    head = "fc." if arch.startswith("resnet") else "classifier."
    state = {key: value for key, value in state.items() if not key.startswith(head)}
    if arch.startswith("densenet"):
        state = fix_legacy_densenet_keys(state)
    trunk, pool, dim = torchvision_backbone(arch)
    trunk.load_state_dict(state, strict=True)
    return Encoder(name, trunk, pool, dim, IMAGENET_PREPROCESSING,
                   {"source": "torchvision", "weights": str(weights), "url": weights.url, "file": str(path),
                    "weights_sha256": sha256_file(path), "licence": TORCHVISION_LICENCE})


def imagenet_source(arch: str) -> WeightsSource:
    """The torchvision weights file as a :class:`WeightsSource` (sha256 prefix from its file name)."""
    import re
    url = _imagenet_weights(arch).url
    filename = url.rsplit("/", 1)[-1]
    match = re.search(r"-([0-9a-f]{8,})\.", filename)
    return WeightsSource(filename, "torchvision", url, sha256=match.group(1) if match else None,
                         how_to_get=f"or let torchvision cache it in {torch_hub_checkpoint_dir()}", url_verified=True)


for _arch, _dim in FEATURE_DIMS.items():
    ENCODERS.add(f"{_arch}-random", EncoderSpec(
        name=f"{_arch}-random", architecture=_arch, feature_dim=_dim,
        build=partial(random_encoder, _arch, f"{_arch}-random"), kind="random",
        description=f"{_arch}, random init (seed 0)", licence="n/a",
        default_in_benchmark=_arch == "resnet18"))
    ENCODERS.add(f"{_arch}-supervised", EncoderSpec(
        name=f"{_arch}-supervised", architecture=_arch, feature_dim=_dim,
        build=partial(imagenet_encoder, _arch, f"{_arch}-supervised"), kind="imagenet-supervised",
        description=f"{_arch}, torchvision ImageNet-1k supervised (IMAGENET1K_V1)",
        licence=TORCHVISION_LICENCE, weights_status=partial(imagenet_status, _arch),
        aliases=("supervised", "baseline") if _arch == "resnet50" else (),
        default_in_benchmark=True, extra={"weights_sources": (imagenet_source(_arch),)}))
