"""The Encoder contract: a frozen-or-trainable image network that returns pooled features.

``Encoder(x)`` maps network input [N, 3, H, W] (already through ``encoder.preprocessing``) to
pooled features [N, feature_dim]; ``encoder.feature_map(x)`` gives the last spatial map
[N, C, h, w] used by deep-image-prior reconstruction and Grad-CAM. ``provenance`` says where the
weights came from (file, sha256, licence) and goes into every record.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from pretrained.preprocessing import Preprocessing


class Encoder(nn.Module):
    """A backbone split into a spatial ``trunk`` and a ``pool`` to a vector.

    Args:
        name: registry name.
        trunk: module mapping [N, 3, H, W] -> [N, C, h, w] (or tokens for ViTs, with a matching pool).
        pool: module mapping the trunk's output to [N, feature_dim].
        feature_dim: D.
        preprocessing: the input pipeline this encoder was trained with.
        provenance: JSON-able facts about the weights (source, file, sha256, licence, ...).
    """

    def __init__(self, name: str, trunk: nn.Module, pool: nn.Module, feature_dim: int,
                 preprocessing: Preprocessing, provenance: dict[str, Any]):
        super().__init__()
        self.name = name
        self.trunk = trunk
        self.pool = pool
        self.feature_dim = feature_dim
        self.preprocessing = preprocessing
        self.provenance = dict(provenance)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, feature_dim]."""
        return self.pool(self.trunk(x))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> last spatial feature map [N, C, h, w]."""
        return self.trunk(x)


class GlobalAvgPool(nn.Module):
    """[N, C, h, w] -> [N, C] (optionally after a ReLU, as DenseNet's head does)."""

    def __init__(self, relu: bool = False):
        super().__init__()
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.relu:
            x = torch.relu(x)
        return x.mean(dim=(2, 3))


class EncoderWithHead(nn.Module):
    """``head(encoder(x))``: [N, 3, H, W] -> [N, out]. A classifier (linear head) or a contrastive model
    (projection head); the state dict keys are ``encoder.*`` and ``head.*``."""

    def __init__(self, encoder: Encoder, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


@dataclass
class LoadOptions:
    """What a user can say about how to load weights (CLI flags)."""

    weights_dir: str | None = None
    trust_checkpoint: bool = False
    checkpoint: str | None = None  # an explicit file (local encoders, plugins)


@dataclass
class EncoderSpec:
    """Cheap metadata about an encoder plus the function that builds it.

    ``weights`` describes the checkpoint (``None`` for random init); ``weights_status`` says
    whether it is present without building anything, so ``cli.py models`` stays fast.
    """

    name: str
    architecture: str
    feature_dim: int
    build: Callable[[LoadOptions], Encoder]
    kind: str = "random"  # random | imagenet-supervised | imagenet-ssl | medical | in-domain | user
    description: str = ""
    licence: str = ""
    aliases: tuple[str, ...] = ()
    weights_status: Callable[[LoadOptions], "WeightsStatus"] | None = None
    default_in_benchmark: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def real_weights(self) -> bool:
        return self.kind != "random"

    def status(self, options: LoadOptions | None = None) -> "WeightsStatus":
        options = options or LoadOptions()
        if self.weights_status is None:
            return WeightsStatus(present=True, detail="random init (no weights needed)")
        return self.weights_status(options)


@dataclass
class WeightsStatus:
    """Whether an encoder's weights are present; ``how_to_get`` says where to get them when not."""

    present: bool
    detail: str
    path: str | None = None
    how_to_get: str = ""


def validate_encoder_spec(obj: object) -> None:
    """Registry check: only :class:`EncoderSpec` objects are encoders."""
    if not isinstance(obj, EncoderSpec):
        raise TypeError(f"an encoder registration must be an EncoderSpec, got {type(obj).__name__}")
