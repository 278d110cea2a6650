"""Built-in pretraining recipes: encoders the harness can make itself from embedded data.

``resnet18-simclr-synthderm`` is SimCLR from random init on the train split of ``synthderm``
(split seed 0), small enough for the 2-core CPU main job; ``cli.py benchmark`` pretrains it when
its checkpoint is missing (resuming a killed run) and compares it with the random-init ResNet-18.
Its files live in ``$MEDTRANSFER_CACHE/pretrained/<name>/``; the spec reads the sidecar
``encoder.json`` to say whether they are present and match the recipe, without loading weights.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from pretrained.checkpoints import MissingWeightsError
from pretrained.encoder import Encoder, EncoderSpec, LoadOptions, WeightsStatus
from benchmark.locks import file_lock
from pretrained.local_registry import build_local_encoder
from pretrained.registry import ENCODERS
from pretrained.ssl.pipeline import ENCODER_FILE, KEY_PREFIX, SIDECAR_FILE, pretrained_dir, read_sidecar, run_pretraining
from pretrained.ssl.trainer import EpochHook, PretrainConfig, StaleStateError

log = logging.getLogger(__name__)

MAIN_JOB_SSL = "resnet18-simclr-synthderm"

MAIN_JOB_CONFIG = PretrainConfig(method="simclr", dataset="synthderm", init="resnet18-random", epochs=6,
                                 image_size=64, batch_size=128, temperature=0.5, lr=2e-3, split="train",
                                 split_seed=0, seed=0)
RECIPES: dict[str, PretrainConfig] = {}


def how_to_get(name: str) -> str:
    return (f"Pretrain it with `python cli.py pretrain recipe {name}` (the main job, `python cli.py benchmark`, "
            f"does this by itself).")


def recipe_status(name: str) -> WeightsStatus:
    """Present when the exported encoder exists and was made by this recipe's exact configuration."""
    directory = pretrained_dir(name)
    sidecar = read_sidecar(directory)
    path = directory / ENCODER_FILE
    if sidecar is None or not path.is_file():
        return WeightsStatus(False, f"not pretrained yet ({directory})", how_to_get=how_to_get(name))
    if sidecar.get("pretraining", {}).get("config_digest") != RECIPES[name].digest():
        return WeightsStatus(False, f"{path} was made by another version of the recipe", how_to_get=how_to_get(name))
    return WeightsStatus(True, str(path), str(path))


def build_recipe_encoder(name: str, options: LoadOptions) -> Encoder:
    status = recipe_status(name)
    if not status.present:
        raise MissingWeightsError(f"{name}/{ENCODER_FILE}", [pretrained_dir(name)], f"{status.detail}. {status.how_to_get}")
    sidecar = read_sidecar(pretrained_dir(name)) or {}
    pretraining = {**sidecar["pretraining"], "checkpoint_sha256": sidecar["checkpoint_sha256"]}
    entry = {"arch": sidecar["architecture"], "checkpoint": status.path, "checkpoint_sha256": sidecar["checkpoint_sha256"],
             "key_prefix": sidecar.get("key_prefix", KEY_PREFIX), "preprocessing": sidecar["preprocessing"],
             "provenance": {"pretraining": pretraining, "recipe": name}, "licence": ENCODERS.get(name).licence}
    return build_local_encoder(name, entry, options or LoadOptions())


def ensure_recipe(name: str, *, results_dir: Path, device: torch.device, num_workers: int = 0,
                  on_epoch_end: EpochHook | None = None) -> dict[str, Any]:
    """Pretrain recipe ``name`` unless its encoder is present (resuming a killed run); returns its sidecar."""
    config, directory = RECIPES[name], pretrained_dir(name)
    if recipe_status(name).present:
        return read_sidecar(directory) or {}
    # several shards of one benchmark (--shard i/n) may start at once: one pretrains, the others wait for it
    with file_lock(directory / ".pretrain.lock"):
        if not recipe_status(name).present:
            log.info("pretraining %s into %s", name, directory)
            try:
                run_pretraining(config, directory, results_dir=results_dir, device=device, num_workers=num_workers,
                                on_epoch_end=on_epoch_end)
            except StaleStateError:
                log.warning("discarding the training state of an older %s recipe in %s", name, directory)
                run_pretraining(config, directory, results_dir=results_dir, device=device, num_workers=num_workers,
                                on_epoch_end=on_epoch_end, overwrite=True)
    return read_sidecar(directory) or {}


def register_recipe(name: str, config: PretrainConfig, architecture: str, feature_dim: int,
                    default_in_benchmark: bool = True) -> EncoderSpec:
    """Add a recipe and its encoder spec (present once :func:`ensure_recipe` has made it)."""
    RECIPES[name] = config
    spec = EncoderSpec(
        name=name, architecture=architecture, feature_dim=feature_dim,
        build=lambda options: build_recipe_encoder(name, options), kind="in-domain",
        description=(f"{config.method} from {config.init} on the {config.dataset} train split, "
                     f"{config.epochs} epochs at {config.image_size} px (built-in recipe; made by the main job)"),
        licence="as medtransfer (trained on embedded synthetic data)",
        weights_status=lambda options: recipe_status(name), default_in_benchmark=default_in_benchmark,
        extra={"recipe": True})
    ENCODERS.add(name, spec)
    return spec


register_recipe(MAIN_JOB_SSL, MAIN_JOB_CONFIG, "resnet18", 512)
