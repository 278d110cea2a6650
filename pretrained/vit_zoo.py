"""Vision Transformers through timm: random-init twins (pretrained ViTs come in through ``local``).

``vit-{tiny,small,base}-random`` are timm ``vit_*_patch16_224`` with seeded random weights.
Pooled features are the CLS token after the final norm (timm ``forward_head(pre_logits=True)``);
``feature_map`` gives the patch tokens as [N, C, H/16, W/16] (14 x 14 at 224 px) for spatial
probes. A ViT checkpoint of your own loads with ``python cli.py models add NAME --arch
timm:vit_small_patch16_224 --checkpoint FILE`` (see docs/encoders.md).
"""
from __future__ import annotations

from functools import partial

import torch

from pretrained.architectures import state_fingerprint
from pretrained.backbones import TIMM_PREFIX, build_backbone, make_encoder
from pretrained.encoder import Encoder, EncoderSpec, LoadOptions
from pretrained.registry import ENCODERS

VITS = {"vit-tiny": ("vit_tiny_patch16_224", 192), "vit-small": ("vit_small_patch16_224", 384),
        "vit-base": ("vit_base_patch16_224", 768)}


def random_timm_encoder(arch: str, name: str, options: LoadOptions, seed: int = 0) -> Encoder:
    """Seeded random-init timm encoder with timm's default preprocessing for ``arch``."""
    backbone = build_backbone(TIMM_PREFIX + arch, seed=seed)
    encoder = make_encoder(name, backbone, backbone.preprocessing,
                           {"source": "random-init", "architecture": arch, "library": "timm", "init_seed": seed,
                            "torch_version": torch.__version__})
    encoder.provenance["weights_sha256"] = state_fingerprint(encoder)
    return encoder


for _short, (_arch, _dim) in VITS.items():
    ENCODERS.add(f"{_short}-random", EncoderSpec(
        name=f"{_short}-random", architecture=_arch, feature_dim=_dim,
        build=partial(random_timm_encoder, _arch, f"{_short}-random"), kind="random",
        description=f"timm {_arch}, random init (seed 0); CLS-token features", licence="n/a"))
