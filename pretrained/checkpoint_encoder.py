"""The shared builder: architecture + checkpoint file + format -> Encoder with provenance.

Every checkpoint-backed encoder (ImageNet SSL, CXR, local) is built here: read the file safely
(:mod:`pretrained.checkpoint_io`), convert where the format needs it (BYOL haiku), unwrap and split
the keys with the format's explicit key map (:mod:`pretrained.formats`), load the backbone
strictly, and record file, format, URL, licence and the file's sha256 in ``provenance``.
"""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

import torch

from pretrained.architectures import DENSENETS
from pretrained.backbones import Backbone, build_backbone, make_encoder
from pretrained.byol_haiku import convert_byol_haiku
from pretrained.checkpoint_io import read_checkpoint
from pretrained.checkpoints import sha256_file
from pretrained.encoder import Encoder, EncoderSpec, LoadOptions
from pretrained.errors import CheckpointError
from pretrained.formats import FORMATS, CheckpointFormat, SplitState, fix_legacy_densenet_keys, load_backbone_state, \
    split_state, unwrap
from pretrained.preprocessing import Preprocessing
from pretrained.weights_sources import WeightsSource, require_first, search_dirs, sources_status

log = logging.getLogger(__name__)


def load_state(path: str | Path, fmt: CheckpointFormat, trust_checkpoint: bool = False) -> SplitState:
    """Read ``path`` and split its keys with ``fmt`` (backbone keys prefix-stripped)."""
    source = str(path)
    if fmt.needs_trust and not trust_checkpoint:
        raise CheckpointError(f"{source} is in the '{fmt.name}' format, which can only be read by full unpickling "
                              f"(it can run code). Only if you trust the file, pass --trust-checkpoint; or use the "
                              f"converted PyTorch file instead.")
    raw: Any = read_checkpoint(path, trust_checkpoint)
    if fmt.name == "byol-haiku":
        raw = convert_byol_haiku(raw, source)
    return split_state(unwrap(raw, fmt, source), fmt, source)


def load_backbone(arch: str, path: str | Path, fmt: CheckpointFormat, trust_checkpoint: bool = False
                  ) -> tuple[Backbone, SplitState]:
    """A backbone of ``arch`` with the checkpoint's weights loaded strictly."""
    split = load_state(path, fmt, trust_checkpoint)
    state = split.backbone
    if arch in DENSENETS:
        state = fix_legacy_densenet_keys(state)
    backbone = build_backbone(arch)
    load_backbone_state(backbone.loadable, state, fmt, str(path))
    return backbone, split


def checkpoint_provenance(path: Path, fmt: CheckpointFormat, arch: str, split: SplitState, *,
                          url: str | None = None, licence: str = "", **more: Any) -> dict[str, Any]:
    """Provenance facts of a checkpoint-backed encoder (JSON-able)."""
    return {"source": "checkpoint", "architecture": arch, "file": str(path), "file_name": path.name,
            "format": fmt.name, "url": url, "licence": licence, "weights_sha256": sha256_file(path),
            "dropped_keys": {label: len(keys) for label, keys in split.dropped.items()},
            "ignored_keys": len(split.ignored), "torch_version": torch.__version__, **more}


def build_from_sources(name: str, arch: str, sources: tuple[WeightsSource, ...], preprocessing: Preprocessing,
                       licence: str, options: LoadOptions) -> Encoder:
    """Build encoder ``name`` from the first of ``sources`` found in the weights folders."""
    source, path = require_first(sources, search_dirs(options), name)
    fmt = FORMATS[source.format]
    backbone, split = load_backbone(arch, path, fmt, options.trust_checkpoint)
    log.info("loaded %s from %s (%s; dropped %s)", name, path, fmt.name,
             {k: len(v) for k, v in split.dropped.items()})
    provenance = checkpoint_provenance(path, fmt, arch, split, url=source.url, licence=licence)
    return make_encoder(name, backbone, preprocessing, provenance)


def checkpoint_spec(name: str, arch: str, feature_dim: int, sources: tuple[WeightsSource, ...],
                    preprocessing: Preprocessing, *, kind: str, description: str, licence: str,
                    aliases: tuple[str, ...] = (), citation: str = "") -> EncoderSpec:
    """EncoderSpec of a checkpoint-backed encoder (never in the main job: no offline weights)."""
    for source in sources:
        if source.format not in FORMATS:
            raise ValueError(f"{name}: unknown checkpoint format '{source.format}'")
    return EncoderSpec(
        name=name, architecture=arch, feature_dim=feature_dim,
        build=partial(build_from_sources, name, arch, sources, preprocessing, licence),
        kind=kind, description=description, licence=licence, aliases=aliases,
        weights_status=partial(sources_status, sources, encoder=name), default_in_benchmark=False,
        extra={"weights_sources": sources, "preprocessing": preprocessing.to_dict(), "citation": citation})
