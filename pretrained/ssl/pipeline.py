"""From a dataset name to a registered encoder: choose the images, pretrain, export, register.

The exported file ``encoder.pt`` holds ``{"format", "architecture", "state_dict", "preprocessing",
"pretraining"}``; the state dict keys are the Encoder's (``trunk.*``, ``pool.*``), so the local
registry loads it with key prefix ``trunk.``. A sidecar ``encoder.json`` repeats everything but
the tensors (plus the file's sha256) for tools that must not load the weights.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.atomic import atomic_torch_save, atomic_write_text
from benchmark.features import default_cache_dir
from datasets.base import ImageDataset
from datasets.registry import DATASETS
from datasets.splits import resolve_splits
from pretrained.checkpoints import sha256_file
from pretrained.encoder import Encoder, LoadOptions
from pretrained.local_registry import LOCAL_ORIGIN, load_local_entries, register_local_encoder
from pretrained.registry import ENCODERS
from pretrained.ssl import distributed
from pretrained.ssl.trainer import EpochHook, PretrainConfig, PretrainData, PretrainResult, pretrain

log = logging.getLogger(__name__)

ENCODER_FILE = "encoder.pt"
SIDECAR_FILE = "encoder.json"
ENCODER_FORMAT = "medtransfer-encoder-v1"
KEY_PREFIX = "trunk."


def pretrained_dir(name: str, cache_dir: Path | None = None) -> Path:
    """Where pretraining ``name`` keeps its training state and exported encoder."""
    return Path(cache_dir or default_cache_dir()) / "pretrained" / name


def select_images(dataset: ImageDataset, split: str, results_dir: Path, split_seed: int,
                  split_file: Path | None = None) -> PretrainData:
    """The dataset rows of ``split`` ("train", "train+val" or "all"), using the evaluators' split files."""
    splits = resolve_splits(dataset, Path(results_dir), seed=split_seed, split_file=split_file)
    names = {"train": ("train",), "train+val": ("train", "val"), "all": ("train", "val", "test")}[split]
    indices = np.sort(np.concatenate([splits.indices(name) for name in names]))
    if split == "all":
        log.warning("pretraining on every image of %s, test images included (transductive); "
                    "evaluations of this encoder on %s are not independent of its test split", dataset.name, dataset.name)
    return PretrainData(dataset, indices, splits.sha256, splits.source)


def export_encoder(encoder: Encoder, arch: str, pretraining: dict[str, Any], directory: Path) -> tuple[Path, str]:
    """Write ``encoder.pt`` (atomically) and its sidecar; returns (path, sha256)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ENCODER_FILE
    payload = {"format": ENCODER_FORMAT, "architecture": arch, "preprocessing": encoder.preprocessing.to_dict(),
               "pretraining": json.loads(json.dumps(pretraining, default=str)),
               "state_dict": {key: value.detach().cpu().contiguous() for key, value in encoder.state_dict().items()}}
    atomic_torch_save(payload, path)
    digest = sha256_file(path)
    sidecar = {key: value for key, value in payload.items() if key != "state_dict"}
    sidecar.update({"checkpoint_sha256": digest, "key_prefix": KEY_PREFIX, "feature_dim": encoder.feature_dim})
    atomic_write_text(directory / SIDECAR_FILE, json.dumps(sidecar, indent=2, sort_keys=True))
    return path, digest


def read_sidecar(directory: Path) -> dict[str, Any] | None:
    path = Path(directory) / SIDECAR_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass
class PretrainOutcome:
    name: str
    checkpoint: Path
    sha256: str
    pretraining: dict[str, Any]
    result: PretrainResult | None  # None on ranks other than 0


def check_name_free(name: str, config: PretrainConfig, overwrite: bool = False) -> None:
    """Raise ValueError when ``name`` is taken by a non-local encoder, or (without ``overwrite``) by a
    local one pretrained with another configuration: a name must keep meaning the same weights."""
    if name not in ENCODERS:
        return
    origin = ENCODERS.origin(name)
    if origin != LOCAL_ORIGIN:
        raise ValueError(f"encoder name '{name}' is taken by {origin}; choose another --name")
    existing = load_local_entries().get(name, {}).get("provenance", {}).get("pretraining", {})
    if not overwrite and existing.get("config_digest") not in (None, config.digest()):
        raise ValueError(f"encoder '{name}' is already registered with another pretraining configuration; "
                         f"choose another --name, or pass --overwrite to replace it")


def run_pretraining(config: PretrainConfig, directory: Path, *, results_dir: Path, device: torch.device,
                    roots: dict[str, Path] | None = None, load_options: LoadOptions | None = None,
                    split_file: Path | None = None, cache_dir: Path | None = None, num_workers: int = 0,
                    on_epoch_end: EpochHook | None = None, overwrite: bool = False) -> tuple[PretrainResult, Path, str, dict]:
    """Build the dataset, pick its images, pretrain (resuming from ``directory``), export ``encoder.pt``.

    Returns (result, checkpoint path, sha256, pretraining provenance); on DDP ranks other than 0
    the checkpoint is written by rank 0 and the path and sha256 are still returned.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dataset_name = DATASETS.resolve(config.dataset)
    root = (roots or {}).get(dataset_name)
    dataset = DATASETS.get(dataset_name).build(Path(root) if root else None, dict(config.dataset_options))
    data = select_images(dataset, config.split, results_dir, config.split_seed, split_file)
    result = pretrain(config, data, directory, device=device, load_options=load_options, cache_dir=cache_dir,
                      num_workers=num_workers, on_epoch_end=on_epoch_end, overwrite=overwrite)
    context = distributed.current()
    arch = ENCODERS.get(config.init).architecture
    if context.is_main:
        export_encoder(result.encoder, arch, result.provenance, directory)
    distributed.barrier(context)
    path = directory / ENCODER_FILE
    digest = sha256_file(path)
    pretraining = {**result.provenance, "checkpoint_sha256": digest}
    return result, path, digest, pretraining


def pretrain_and_register(name: str, config: PretrainConfig, *, results_dir: Path, device: torch.device,
                          cache_dir: Path | None = None, **kwargs: Any) -> PretrainOutcome:
    """Pretrain ``config`` into ``pretrained_dir(name, cache_dir)`` and register ``name`` in the local registry.

    Other keyword arguments go to :func:`run_pretraining`.
    """
    check_name_free(name, config, kwargs.get("overwrite", False))
    directory = pretrained_dir(name, cache_dir)
    result, path, digest, pretraining = run_pretraining(config, directory, results_dir=results_dir, device=device,
                                                        cache_dir=cache_dir, **kwargs)
    if distributed.current().is_main:
        register_local_encoder(name, ENCODERS.get(config.init).architecture, path, KEY_PREFIX,
                               result.encoder.preprocessing.to_dict(), {"pretraining": pretraining},
                               feature_dim=result.encoder.feature_dim, kind="in-domain")
    return PretrainOutcome(name, path, digest, pretraining, result)
