"""Backbone constructors: a torchvision architecture name -> (trunk, pool, feature_dim).

The trunk ends at the last spatial map (ResNet ``layer4``, DenseNet ``features``), so the same
module serves pooled features and spatial probes. State-dict keys of the trunk are the
torchvision keys without the classifier (``conv1.weight``, ``layer1.0...``, ``features.*``).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch
import torchvision
from torch import nn

from pretrained.encoder import GlobalAvgPool

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2")
DENSENETS = ("densenet121", "densenet161", "densenet169", "densenet201")


class ResNetTrunk(nn.Module):
    """torchvision ResNet up to ``layer4``; keys match torchvision's minus ``fc``."""

    def __init__(self, resnet: torchvision.models.ResNet):
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(resnet, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class DenseNetTrunk(nn.Module):
    """torchvision DenseNet ``features`` (ends with ``norm5``); keys ``features.*``."""

    def __init__(self, densenet: torchvision.models.DenseNet):
        super().__init__()
        self.features = densenet.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def torchvision_backbone(arch: str, seed: int = 0) -> tuple[nn.Module, nn.Module, int]:
    """Randomly initialised (seeded, reproducible) trunk, pool and feature dim for ``arch``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(torchvision.models, arch)(weights=None)
    if arch in RESNETS:
        return ResNetTrunk(model), GlobalAvgPool(), model.fc.in_features
    if arch in DENSENETS:
        return DenseNetTrunk(model), GlobalAvgPool(relu=True), model.classifier.in_features
    raise ValueError(f"unsupported torchvision architecture '{arch}'; supported: {', '.join(RESNETS + DENSENETS)}")


def state_fingerprint(module: nn.Module) -> str:
    """sha256 over a module's state dict (names, shapes and bytes), for random or converted weights."""
    digest = hashlib.sha256()
    for name, tensor in OrderedDict(sorted(module.state_dict().items())).items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
