"""The contrastive pretraining loop: SimCLR (NT-Xent) or SupCon, resumable, AMP, DDP.

Design choices (docs/pretraining.md explains them):

* Optimiser: AdamW (decoupled weight decay, none on biases and norm parameters), peak ``lr`` after
  a linear warm-up over the first ``warmup_fraction`` of the steps, then a cosine decay to 0,
  set per step. LARS exists for batches of thousands; the seed studies' in-domain runs use batches
  of 80-512, where Adam(W) needs no batch-size-dependent learning-rate scaling.
* Every step's views are a pure function of (seed, epoch, step); the batch order of an epoch of
  (seed, epoch). The global batch is augmented identically on every rank and each rank takes its
  share, so one process and N DDP processes see the same images and the same views.
* A training state is written atomically after every epoch (``train_state.pt``); a rerun with
  the same configuration resumes after the last finished epoch and ends where an uninterrupted
  run would.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from benchmark.atomic import atomic_torch_save
from benchmark.device import conv_memory_format
from datasets.base import ImageDataset
from pretrained.architectures import state_fingerprint
from pretrained.encoder import Encoder, EncoderWithHead, LoadOptions
from pretrained.registry import ENCODERS
from pretrained.ssl import distributed
from pretrained.ssl.augment import AugmentConfig, simclr_view
from pretrained.ssl.data import batch_plan, decode_images, epoch_order, rank_shards
from pretrained.ssl.losses import nt_xent, supcon
from pretrained.ssl.model import build_head

log = logging.getLogger(__name__)

METHODS = ("simclr", "supcon")
DEFAULT_TEMPERATURE = {"simclr": 0.5, "supcon": 0.1}
STATE_FILE = "train_state.pt"
STATE_FORMAT = 1


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that changes the pretrained weights (hashed to recognise a run when resuming).

    ``split``: which images of the dataset to pretrain on: "train" (default; leak-free for
    evaluation on the same dataset and split seed), "train+val", or "all" (unlabelled test images
    too: transductive, never for SupCon, recorded in the provenance).
    """

    method: str
    dataset: str
    init: str
    epochs: int
    image_size: int = 224
    batch_size: int = 256
    temperature: float | None = None  # None = the method's default
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1
    projection_dim: int = 128
    projection_hidden: int | None = None  # None = the encoder's feature dim
    balanced: bool = False
    split: str = "train"
    split_seed: int = 0
    seed: int = 0
    decode_size: int | None = None  # None = round(1.25 * image_size)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    dataset_options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got '{self.method}'")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.split not in ("train", "train+val", "all"):
            raise ValueError(f"split must be train, train+val or all, got '{self.split}'")
        if self.method == "supcon" and self.split == "all":
            raise ValueError("SupCon uses labels: pretraining on split 'all' would train on test labels; "
                             "use --split train (or train+val)")
        if self.image_size < 16:
            raise ValueError(f"image size must be >= 16, got {self.image_size}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.lr <= 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")

    @property
    def resolved_temperature(self) -> float:
        return self.temperature if self.temperature is not None else DEFAULT_TEMPERATURE[self.method]

    @property
    def resolved_decode_size(self) -> int:
        return self.decode_size or int(round(1.25 * self.image_size))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["augment"] = self.augment.to_dict()
        data["dataset_options"] = dict(self.dataset_options)
        data["temperature"] = self.resolved_temperature
        data["decode_size"] = self.resolved_decode_size
        data["optimizer"] = "adamw"
        data["schedule"] = "linear warm-up then cosine to 0, per step"
        return data

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class PretrainData:
    """The images to pretrain on: dataset rows plus facts for the provenance."""

    dataset: ImageDataset
    indices: np.ndarray
    split_sha256: str
    split_source: str


@dataclass
class PretrainResult:
    encoder: Encoder  # trained trunk + pool, in eval mode, on the CPU
    provenance: dict[str, Any]  # the "pretraining" block of the encoder's provenance
    losses: list[float]  # mean loss per epoch (all epochs, resumed ones included)
    start_epoch: int  # 0 for a fresh run, k when resumed after k finished epochs
    state_path: Path


class StaleStateError(ValueError):
    """A training state left by a run with another configuration."""


EpochHook = Callable[[int, float], None]  # (epochs finished, mean loss of that epoch)


def lr_at(step: int, total_steps: int, config: PretrainConfig) -> float:
    """Learning rate of step ``step`` (0-based): linear warm-up, then cosine decay to 0."""
    warmup = int(config.warmup_fraction * total_steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _step_generator(config: PretrainConfig, epoch: int, step: int, device: torch.device) -> torch.Generator:
    seed = int(np.random.SeedSequence([config.seed, epoch, step]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(seed)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_init_encoder(config: PretrainConfig, options: LoadOptions) -> Encoder:
    """The encoder to start from (any registered encoder; ``<arch>-random`` for random init)."""
    encoder = ENCODERS.get(config.init).build(options)
    encoder.preprocessing = encoder.preprocessing.with_input_size(config.image_size)
    return encoder


def _load_state(path: Path, config: PretrainConfig) -> dict | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a torn or foreign file: say so, never guess
        raise ValueError(f"cannot read the training state {path} ({type(error).__name__}: {error}); "
                         f"delete it (or pass --overwrite) to start again") from None
    if state.get("format") != STATE_FORMAT or state.get("config_digest") != config.digest():
        raise StaleStateError(f"{path} belongs to a pretraining run with a different configuration; "
                         f"use another --name, or --overwrite to discard it")
    return state


def pretrain(config: PretrainConfig, data: PretrainData, work_dir: Path, *, device: torch.device,
             load_options: LoadOptions | None = None, cache_dir: Path | None = None, num_workers: int = 0,
             on_epoch_end: EpochHook | None = None, overwrite: bool = False) -> PretrainResult:
    """Pretrain ``config.init`` on ``data`` with ``config.method``; resumes from ``work_dir`` when possible.

    Under torchrun call :func:`distributed.init_from_env` first; every rank calls this function,
    rank 0 writes the training state. Raises ValueError for inconsistent settings.
    """
    context = distributed.current()
    work_dir = Path(work_dir)
    state_path = work_dir / STATE_FILE
    if overwrite and context.is_main and state_path.exists():
        state_path.unlink()
    distributed.barrier(context)
    state = _load_state(state_path, config)

    encoder = build_init_encoder(config, load_options or LoadOptions())
    init_facts = {"init": config.init, "init_weights_sha256": encoder.provenance.get("weights_sha256"),
                  "init_source": encoder.provenance.get("source")}
    model = EncoderWithHead(encoder, build_head(encoder.feature_dim, config.projection_hidden,
                                                 config.projection_dim, config.seed))
    model.to(device)
    memory_format = conv_memory_format(model, device) if device.type == "cuda" else None
    if memory_format is not None:
        model.to(memory_format=memory_format)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    losses: list[float] = []
    start_epoch, seconds_before = 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        losses, start_epoch, seconds_before = list(state["losses"]), int(state["epoch"]), float(state["seconds"])
        log.info("resuming %s after epoch %d of %d", work_dir, start_epoch, config.epochs)

    train_model: nn.Module = model
    synced = context.enabled and device.type == "cuda"
    if context.enabled:
        if synced:  # global BatchNorm statistics, as SimCLR does (SyncBatchNorm needs a GPU)
            train_model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)

    labels_all = data.dataset.labels[data.indices]
    images = decode_images(data.dataset, data.indices, config.resolved_decode_size,
                           grayscale=encoder.preprocessing.grayscale or encoder.preprocessing.histogram_normalize,
                           cache_dir=cache_dir, num_workers=num_workers)
    images = images.to(device)
    labels_tensor = torch.as_tensor(labels_all, device=device)
    min_batch = 2 * context.world_size
    steps_per_epoch = len(batch_plan(np.arange(len(images)), config.batch_size, min_batch))
    total_steps = steps_per_epoch * config.epochs
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    temperature = config.resolved_temperature
    preprocessing = encoder.preprocessing

    start_time = time.perf_counter()
    images_seen = 0
    for epoch in range(start_epoch, config.epochs):
        train_model.train()
        order = epoch_order(len(images), epoch, config.seed, labels_all if config.balanced else None)
        epoch_loss: torch.Tensor | float = 0.0
        epoch_count = 0
        for step, batch in enumerate(batch_plan(order, config.batch_size, min_batch)):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch * steps_per_epoch + step, total_steps, config)
            generator = _step_generator(config, epoch, step, device)
            batch_index = torch.as_tensor(batch, device=device)
            global_images = images[batch_index]
            view1 = simclr_view(global_images, config.image_size, config.augment, generator)
            view2 = simclr_view(global_images, config.image_size, config.augment, generator)
            shards = rank_shards(len(batch), context.world_size)
            share = torch.as_tensor(shards[context.rank], device=device)
            x = preprocessing.normalize(torch.cat([view1[share], view2[share]]))
            if memory_format is not None:
                x = x.contiguous(memory_format=memory_format)
            if autocast is not None:
                with autocast:
                    z = train_model(x)
            else:
                z = train_model(x)
            z1, z2 = z.float().chunk(2)
            sizes = [len(shard) for shard in shards]
            z1, z2 = distributed.gather_with_grad(z1, context, sizes), distributed.gather_with_grad(z2, context, sizes)
            if config.method == "simclr":
                loss = nt_xent(z1, z2, temperature)
            else:
                loss = supcon(z1, z2, labels_tensor[batch_index], temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_loss = epoch_loss + loss.detach() * len(batch)  # stays on the device: no sync per step
            epoch_count += len(batch)
            images_seen += 2 * len(batch)
        mean_loss = float(epoch_loss) / epoch_count
        if not math.isfinite(mean_loss):  # before saving: the last saved state stays a good one
            raise ValueError(f"the {config.method} loss became {mean_loss} in epoch {epoch + 1}; "
                             f"lower --lr or raise --temperature")
        losses.append(mean_loss)
        seconds = seconds_before + time.perf_counter() - start_time
        if context.is_main:
            atomic_torch_save({"format": STATE_FORMAT, "config_digest": config.digest(), "config": config.to_dict(),
                          "epoch": epoch + 1, "losses": losses, "seconds": seconds,
                          "model": model.state_dict(), "optimizer": optimizer.state_dict()}, state_path)
        distributed.barrier(context)
        log.info("epoch %d/%d: %s loss %.4f (%.1f s)", epoch + 1, config.epochs, config.method, losses[-1], seconds)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, losses[-1])

    elapsed = time.perf_counter() - start_time
    trained_state = {key: value.detach().cpu() for key, value in model.encoder.state_dict().items()}
    if synced:  # SyncBatchNorm layers cannot run on the CPU: put the weights back into a plain encoder
        encoder = build_init_encoder(config, load_options or LoadOptions())
    else:
        encoder = model.encoder.cpu()
    encoder.load_state_dict(trained_state)
    encoder.to(memory_format=torch.contiguous_format)
    encoder.eval()
    provenance = {
        "method": config.method, **init_facts,
        "dataset": data.dataset.name, "dataset_manifest_sha256": data.dataset.manifest_hash(),
        "split": config.split, "split_seed": config.split_seed, "split_sha256": data.split_sha256,
        "split_source": data.split_source, "n_images": int(len(data.indices)),
        "epochs": config.epochs, "batch_size": config.batch_size, "temperature": temperature, "lr": config.lr,
        "weight_decay": config.weight_decay, "optimizer": "adamw", "schedule": "warmup-cosine",
        "warmup_fraction": config.warmup_fraction, "image_size": config.image_size,
        "decode_size": config.resolved_decode_size, "projection": [encoder.feature_dim,
                                                                   config.projection_hidden or encoder.feature_dim,
                                                                   config.projection_dim],
        "balanced": config.balanced, "seed": config.seed, "augment": config.augment.to_dict(),
        "dataset_options": dict(config.dataset_options),
        "final_loss": losses[-1] if losses else None, "loss_per_epoch": losses,
        "steps": total_steps, "seconds": seconds_before + elapsed,
        "views_per_second_last_session": images_seen / max(elapsed, 1e-9) if images_seen else None,
        "device": str(device), "world_size": context.world_size, "amp": "bf16" if autocast is not None else "fp32",
        "resumed_from_epoch": start_epoch, "config_digest": config.digest(), "torch": torch.__version__,
    }
    # the trained weights are no longer the init's: fresh provenance, so no cache keyed on it is reused
    encoder.provenance = {"source": f"{config.method}-pretraining", "architecture": encoder.provenance.get("architecture"),
                          "weights_sha256": state_fingerprint(encoder), "pretraining": provenance}
    return PretrainResult(encoder, provenance, losses, start_epoch, state_path)
