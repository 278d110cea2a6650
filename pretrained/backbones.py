"""Any torchvision or timm architecture as (trunk, pool, feature_dim), plus which module to load.

- torchvision ResNets / DenseNets: :func:`pretrained.architectures.torchvision_backbone`.
- other torchvision classifiers with a ``features`` block (EfficientNet, MobileNet, ConvNeXt,
  VGG, ...): trunk = ``features``, pooled = global average of it.
- timm models (``timm:NAME``, or any name timm knows that torchvision does not): trunk =
  ``forward_features`` (tokens for ViTs), pool = ``forward_head(pre_logits=True)`` (the CLS token
  after the final norm for ``vit_*_patch16_224``). ViTs are created with ``dynamic_img_size`` so
  ``--image-size`` works; :class:`TimmEncoder.feature_map` reshapes patch tokens to [N, C, h, w].

``Backbone.loadable`` is the module whose state-dict keys are the upstream keys (torchvision
keys minus the classifier, or the timm model's keys without its head), so checkpoints load into it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from pretrained.architectures import DENSENETS, RESNETS, torchvision_backbone
from pretrained.encoder import Encoder, GlobalAvgPool
from pretrained.preprocessing import Preprocessing

TIMM_PREFIX = "timm:"


@dataclass
class Backbone:
    trunk: nn.Module
    pool: nn.Module
    feature_dim: int
    loadable: nn.Module  # module whose state dict keys are the upstream checkpoint keys
    head_namespaces: tuple[str, ...]  # classifier keys of the full upstream model (dropped when loading)
    library: str  # "torchvision" | "timm"
    preprocessing: Preprocessing  # sensible default for this architecture


class FeaturesTrunk(nn.Module):
    """torchvision classifier's ``features`` block (keys ``features.*``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.features = model.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class TimmTrunk(nn.Module):
    """timm model up to ``forward_features``: [N, 3, H, W] -> [N, C, h, w] or tokens [N, T, C]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class TimmPool(nn.Module):
    """``forward_head(pre_logits=True)`` of the trunk's timm model (held without registering it
    twice, so the encoder's state dict has each weight once)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        object.__setattr__(self, "_model", model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._model.forward_head(x, pre_logits=True)


class TimmEncoder(Encoder):
    """Encoder over a timm model; ``feature_map`` gives [N, C, h, w] for token models too."""

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        out = self.trunk(x)
        if out.dim() == 4:
            return out
        model = self.trunk.model
        patches = out[:, getattr(model, "num_prefix_tokens", 1):]
        if hasattr(model.patch_embed, "dynamic_feat_size"):
            h, w = model.patch_embed.dynamic_feat_size(tuple(x.shape[-2:]))
        else:
            h, w = (size // patch for size, patch in zip(x.shape[-2:], model.patch_embed.patch_size))
        if h * w != patches.shape[1]:
            raise ValueError(f"cannot arrange {patches.shape[1]} patch tokens on a {h}x{w} grid")
        return patches.transpose(1, 2).reshape(out.shape[0], out.shape[-1], h, w)


def is_timm_arch(arch: str) -> bool:
    return arch.startswith(TIMM_PREFIX) or (not _is_torchvision(arch) and _timm_knows(arch))


def _is_torchvision(arch: str) -> bool:
    return arch in torchvision.models.list_models(module=torchvision.models)


def _timm_knows(arch: str) -> bool:
    import timm
    return timm.is_model(arch)


def build_backbone(arch: str, seed: int = 0) -> Backbone:
    """Seeded random-init backbone of ``arch`` (torchvision name, or ``timm:NAME`` / a timm name)."""
    if is_timm_arch(arch):
        return _timm_backbone(arch.removeprefix(TIMM_PREFIX), seed)
    if arch in RESNETS or arch in DENSENETS:
        trunk, pool, dim = torchvision_backbone(arch, seed=seed)
        head = ("fc.",) if arch in RESNETS else ("classifier.",)
        return Backbone(trunk, pool, dim, trunk, head, "torchvision", _imagenet_preprocessing())
    if _is_torchvision(arch):
        return _features_backbone(arch, seed)
    raise ValueError(f"unknown architecture '{arch}': use a torchvision model name (resnet50, densenet121, "
                     f"efficientnet_b0, ...) or a timm one (timm:vit_small_patch16_224)")


def _imagenet_preprocessing() -> Preprocessing:
    from pretrained.torchvision_zoo import IMAGENET_PREPROCESSING
    return IMAGENET_PREPROCESSING


def _features_backbone(arch: str, seed: int) -> Backbone:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.get_model(arch, weights=None)
    if not isinstance(getattr(model, "features", None), nn.Module):
        raise ValueError(f"torchvision '{arch}' has no 'features' block; supported torchvision families: ResNet, "
                         f"DenseNet and models with .features (EfficientNet, MobileNet, ConvNeXt, VGG, ...). "
                         f"Use its timm equivalent instead (timm:NAME).")
    trunk = FeaturesTrunk(model).eval()
    with torch.no_grad():
        dim = int(trunk(torch.zeros(1, 3, 64, 64)).shape[1])
    return Backbone(trunk, GlobalAvgPool(), dim, trunk, ("classifier.",), "torchvision", _imagenet_preprocessing())


def _timm_backbone(name: str, seed: int) -> Backbone:
    import timm
    from timm.data import resolve_data_config
    if not timm.is_model(name):
        raise ValueError(f"timm does not know the architecture '{name}'")
    kwargs = {"dynamic_img_size": True, "dynamic_img_pad": True} if name.startswith(("vit_", "deit_", "eva", "beit")) else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    config = resolve_data_config({}, model=model)
    size = int(config["input_size"][-1])
    crop_pct = float(config.get("crop_pct") or 1.0)
    interpolation = config.get("interpolation", "bicubic")
    interpolation = interpolation if interpolation in ("bicubic", "bilinear", "nearest") else "bicubic"
    preprocessing = Preprocessing(input_size=size, resize_size=int(math.floor(size / crop_pct)),
                                  interpolation=interpolation,
                                  mean=tuple(config["mean"]), std=tuple(config["std"]))
    classifier = model.pretrained_cfg.get("classifier", "head")
    heads = classifier if isinstance(classifier, (tuple, list)) else (classifier,)
    trunk = TimmTrunk(model)
    return Backbone(trunk, TimmPool(model), int(model.num_features), model, tuple(f"{h}." for h in heads), "timm",
                    preprocessing)


def make_encoder(name: str, backbone: Backbone, preprocessing: Preprocessing, provenance: dict) -> Encoder:
    """The right :class:`Encoder` class for ``backbone``."""
    cls = TimmEncoder if backbone.library == "timm" else Encoder
    return cls(name, backbone.trunk, backbone.pool, backbone.feature_dim, preprocessing, provenance)
