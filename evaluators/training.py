"""The fine-tuning loop: SGD + schedule, periodic validation, early stopping, checkpoints, resume, DDP.

One :class:`Trainer` trains one model with one (lr, wd). Protocol facts:

* SGD (Nesterov momentum 0.9 by default); ``cosine`` schedule stepped every step over the whole
  step budget (ANTON), ``plateau`` (ReduceLROnPlateau on the validation loss, stepped at each
  validation, CHAVES) or ``constant``.
* Validation every ``eval_every`` steps and at the last step. The monitored score is the
  validation loss (lower is better) or a metric (higher is better); only a strict improvement
  counts. ``patience`` non-improving validations in a row stop training.
* The best weights are kept twice: a CPU copy in memory and ``best-<step>.pt`` on disk (rank 0).
  At the end the model holds the best weights, never merely the last ones.
* ``last.pt`` (model, optimiser, scheduler, step, early-stopping state, history, torch RNG states,
  sampler settings) is written atomically every ``checkpoint_every`` steps and when training ends.
  A rerun with the same fingerprint resumes from it; batches and augmentations are a pure function
  of (seed, step) (:mod:`evaluators.sampling`), so a resumed run continues exactly where the
  killed one was. ``best-*.pt`` files newer than ``last.pt`` come from the lost future and are
  deleted on resume.
* Under torchrun: DistributedDataParallel, the global batch split over ranks (same batches as
  one process), SyncBatchNorm on CUDA (``sync_bn``), BatchNorm buffers broadcast from rank 0
  before every validation, only rank 0 writes files.
* channels_last memory format (NCHW for depthwise-convolution networks on CUDA, ``conv_memory_format``); bf16
  autocast on CUDA (``amp``).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from benchmark import distributed
from benchmark.atomic import atomic_torch_save
from benchmark.device import autocast_dtype, conv_memory_format
from benchmark.workers import data_loader
from evaluators.objectives import training_loss
from evaluators.sampling import TORCH_STREAM, StreamBatchSampler, derive_seed

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
# Called after every optimiser step (and after that step's checkpoint) as hook(step, trainer).
# Tests use it to simulate a kill; it is empty in normal runs.
STEP_HOOKS: list[Callable[[int, "Trainer"], None]] = []


@dataclass
class TrainConfig:
    steps: int
    batch_size: int  # global, over all processes
    lr: float
    weight_decay: float
    eval_every: int
    momentum: float = 0.9
    nesterov: bool = True
    schedule: str = "cosine"  # cosine | plateau | constant
    cosine_eta_min: float = 0.0
    plateau_factor: float = 0.1
    plateau_patience: int = 10
    plateau_min_lr: float = 1e-5
    patience: int | None = None  # validations without improvement before stopping; None = never
    monitor: str = "loss"  # "loss" or a metric name from benchmark.metrics
    checkpoint_every: int | None = None  # steps; None = at every validation
    balanced: bool = False
    seed: int = 0
    amp: bool = True
    sync_bn: bool = True
    num_workers: int = 0
    multilabel: bool = False  # BCE with logits on 0/1 [B, L] targets instead of cross-entropy

    def __post_init__(self) -> None:
        if self.steps < 1 or self.eval_every < 1:
            raise ValueError(f"steps and eval_every must be >= 1 (got {self.steps}, {self.eval_every})")
        if self.schedule not in ("cosine", "plateau", "constant"):
            raise ValueError(f"schedule must be cosine, plateau or constant, got {self.schedule!r}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0 (got {self.lr}, {self.weight_decay})")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")


@dataclass
class Validation:
    """One validation: mean loss (cross-entropy, or BCE for multi-label data) and metrics on the validation split."""

    loss: float
    metrics: dict[str, float]

    def score(self, monitor: str) -> float:
        """Higher is better (the loss is negated)."""
        return -self.loss if monitor == "loss" else float(self.metrics[monitor])


@dataclass
class TrainState:
    step: int = 0
    best_score: float = -math.inf
    best_step: int = 0
    bad_validations: int = 0
    stopped_early: bool = False
    diverged: bool = False  # the training loss became non-finite; the run stopped
    finished: bool = False
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    loss_sum: float = 0.0  # training loss summed since the last validation (for the logged mean)
    loss_count: int = 0


@dataclass
class TrainResult:
    best_step: int
    best_score: float
    steps_run: int
    stopped_early: bool
    history: list[dict]
    train_seconds: float
    eval_seconds: float
    images_per_second: float
    resumed_from: int
    diverged: bool = False


class Trainer:
    """Train ``model`` (a module mapping network input to logits) on ``train_images``.

    Args:
        model: the network; it holds the best weights after :meth:`fit`.
        train_images: map-style dataset taking ``(row, augmentation_seed)`` -> (input, label).
        train_labels: [n] labels of the train rows (class-balanced sampling).
        validate: ``validate(model) -> Validation`` on the full validation split (the same on
            every rank: it must gather over ranks itself).
        config: the protocol; run_dir: where checkpoints go; device: this process's device.
        fingerprint: JSON-able facts that must match for a checkpoint to be resumed.
        progress: called with the number of steps done (a progress bar of ``config.steps``).
    """

    def __init__(self, model: nn.Module, train_images: Dataset, train_labels: np.ndarray,
                 validate: Callable[[nn.Module], Validation], config: TrainConfig, run_dir: Path,
                 device: torch.device, fingerprint: dict, progress: Callable[[int], None] | None = None):
        self.model, self.train_images, self.train_labels = model, train_images, np.asarray(train_labels)
        self.validate, self.config, self.run_dir, self.device = validate, config, Path(run_dir), device
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        self.progress = progress
        self.state = TrainState()
        self.best_weights: dict[str, torch.Tensor] | None = None

    # -- public ---------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        config, device = self.config, self.device
        self.memory_format = conv_memory_format(self.model, device)  # channels_last unless depthwise convs on CUDA
        self.model.to(device, memory_format=self.memory_format)
        world = distributed.world_size()
        if world > 1 and device.type == "cuda" and config.sync_bn:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                         nesterov=config.nesterov and config.momentum > 0,
                                         weight_decay=config.weight_decay)
        self.scheduler = self._make_scheduler()
        torch.manual_seed(derive_seed(config.seed, TORCH_STREAM, distributed.rank()))
        resumed_from = self._resume()
        self._advance_progress(self.state.step)
        if not self.state.finished:
            self._train_loop(world)
        self._advance_progress(self.config.steps - self.state.step)  # early stop: close the bar
        self._restore_best()
        images = (self.state.step - resumed_from) * config.batch_size
        return TrainResult(self.state.best_step, self.state.best_score, self.state.step, self.state.stopped_early,
                           self.state.history, self.state.train_seconds, self.state.eval_seconds,
                           images / self.state.train_seconds if self.state.train_seconds > 0 and images else float("nan"),
                           resumed_from, self.state.diverged)

    # -- the loop -------------------------------------------------------------------------------
    def _train_loop(self, world: int) -> None:
        config, device, state = self.config, self.device, self.state
        network: nn.Module = self.model
        if world > 1:
            network = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        sampler = StreamBatchSampler(self.train_labels, config.batch_size, config.seed, config.balanced,
                                     start_step=state.step, end_step=config.steps,
                                     rank=distributed.rank(), world_size=world)
        if hasattr(self.train_images, "batches"):  # batches made on the device (augment.DeviceAugmentedImages)
            loader = self.train_images.batches(sampler)
        else:
            loader = data_loader(self.train_images, batch_sampler=sampler, num_workers=config.num_workers,
                                 pin_memory=device.type == "cuda", persistent_workers=False)
        amp = autocast_dtype(device) if config.amp else None
        checkpoint_every = config.checkpoint_every or config.eval_every
        self._loss_sum = torch.full((), state.loss_sum, dtype=torch.float64, device=device)
        self._loss_count = state.loss_count
        tick = time.perf_counter()
        for images, targets in loader:
            self.model.train()
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if images.dim() == 4:  # image batches only (a head-only model may take vectors)
                images = images.contiguous(memory_format=self.memory_format)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = network(images)
            loss = training_loss(logits.float(), targets, config.multilabel)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if config.schedule == "cosine":
                self.scheduler.step()
            state.step += 1
            self._advance_progress(1)
            self._loss_sum += loss.detach()  # stays on the device: no sync per step
            self._loss_count += 1
            if state.step % config.eval_every == 0 or state.step == config.steps:
                train_loss = float(self._loss_sum) / self._loss_count  # synchronises
                state.train_seconds += time.perf_counter() - tick
                if math.isfinite(train_loss):
                    self._validate_and_track(train_loss)
                else:  # diverged: stop; the best weights so far (if any) stay valid
                    log.warning("training diverged before step %d (lr %g, non-finite loss); stopping this run",
                                state.step, config.lr)
                    state.diverged = state.stopped_early = True
                self._loss_sum.zero_()
                self._loss_count = 0
                tick = time.perf_counter()
            done = state.stopped_early or state.step >= config.steps
            if done:
                state.finished = True
            if done or state.step % checkpoint_every == 0:
                state.train_seconds += time.perf_counter() - tick
                self._save_checkpoint()
                tick = time.perf_counter()
            for hook in STEP_HOOKS:
                hook(state.step, self)
            if done:
                break
        if not state.finished:  # the loader ran dry without reaching the budget: impossible by construction
            raise RuntimeError(f"training stopped at step {state.step} of {config.steps}")

    def _validate_and_track(self, train_loss: float) -> None:
        config, state = self.config, self.state
        start = time.perf_counter()
        distributed.broadcast_module_buffers(self.model)  # same BatchNorm statistics on every rank
        self.model.eval()
        result = self.validate(self.model)
        state.eval_seconds += time.perf_counter() - start
        score = result.score(config.monitor)
        improved = math.isfinite(score) and score > state.best_score
        if not math.isfinite(score):
            log.warning("validation %s is not finite at step %d; counted as no improvement", config.monitor, state.step)
        if config.schedule == "plateau":
            self.scheduler.step(result.loss)
        state.history.append({"step": state.step, "train_loss": train_loss, "val_loss": result.loss,
                              **{f"val_{k}": v for k, v in result.metrics.items()},
                              "lr": self.optimizer.param_groups[0]["lr"], "improved": improved})
        log.info("step %d: train loss %.4f, val loss %.4f, val %s %.4f%s", state.step, train_loss, result.loss,
                 config.monitor, -score if config.monitor == "loss" else score, " (best)" if improved else "")
        if improved:
            state.best_score, state.best_step, state.bad_validations = score, state.step, 0
            self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in self._unwrapped_state().items()}
            if distributed.is_main_process():
                atomic_torch_save({"format": CHECKPOINT_FORMAT, "step": state.step, "score": score,
                              "model": self.best_weights}, self._best_path(state.step))
        else:
            state.bad_validations += 1
            if config.patience is not None and state.bad_validations >= config.patience:
                state.stopped_early = True
                log.info("early stopping at step %d: no improvement in %d validations (best step %d)",
                         state.step, state.bad_validations, state.best_step)

    def _advance_progress(self, steps: int) -> None:
        if self.progress is not None and steps > 0:
            self.progress(steps)

    # -- checkpoints ----------------------------------------------------------------------------
    def _best_path(self, step: int) -> Path:
        return self.run_dir / f"best-{step:07d}.pt"

    def _last_path(self) -> Path:
        return self.run_dir / "last.pt"

    def _unwrapped_state(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def _save_checkpoint(self) -> None:
        if not distributed.is_main_process():
            return
        state = self.state
        payload = {
            "format": CHECKPOINT_FORMAT, "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
            "step": state.step, "model": self._unwrapped_state(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "trainer": {"best_score": state.best_score, "best_step": state.best_step,
                        "bad_validations": state.bad_validations, "stopped_early": state.stopped_early,
                        "diverged": state.diverged,
                        "finished": state.finished, "history": json.dumps(state.history),
                        "train_seconds": state.train_seconds, "eval_seconds": state.eval_seconds,
                        "loss_sum": float(self._loss_sum), "loss_count": self._loss_count},
            "rng": {"torch": torch.get_rng_state(),
                    **({"cuda": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {})},
        }
        atomic_torch_save(payload, self._last_path())
        self._prune_best_files(keep=state.best_step)

    def _prune_best_files(self, keep: int, newer_than: int | None = None) -> None:
        """Delete best-*.pt except step ``keep`` (only those after ``newer_than`` when given)."""
        for path in self.run_dir.glob("best-*.pt"):
            step = int(path.stem.split("-")[1])
            if step != keep and (newer_than is None or step > newer_than):
                path.unlink(missing_ok=True)

    def _resume(self) -> int:
        """Load ``last.pt`` when it matches the fingerprint; returns the step resumed from (0 = fresh)."""
        path = self._last_path()
        found = path.is_file()
        if not distributed.same_on_all_ranks(int(found)):
            raise RuntimeError(f"some ranks see {path} and others do not; the results folder must be on a "
                               f"filesystem shared by every node to resume")
        if not found:
            return 0
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError) as error:
            log.warning("checkpoint %s is unreadable (%s); training from scratch", path, error)
            return 0
        if payload.get("format") != CHECKPOINT_FORMAT or payload.get("fingerprint") != json.dumps(self.fingerprint, sort_keys=True):
            log.warning("checkpoint %s was written for other settings; training from scratch", path)
            if distributed.is_main_process():
                path.unlink(missing_ok=True)
                self._prune_best_files(keep=-1)
            distributed.barrier()
            return 0
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(payload["scheduler"])
        trainer = payload["trainer"]
        self.state = TrainState(step=int(payload["step"]), best_score=float(trainer["best_score"]),
                                best_step=int(trainer["best_step"]), bad_validations=int(trainer["bad_validations"]),
                                stopped_early=bool(trainer["stopped_early"]), diverged=bool(trainer["diverged"]),
                                finished=bool(trainer["finished"]),
                                history=json.loads(trainer["history"]), train_seconds=float(trainer["train_seconds"]),
                                eval_seconds=float(trainer["eval_seconds"]), loss_sum=float(trainer["loss_sum"]),
                                loss_count=int(trainer["loss_count"]))
        if not distributed.same_on_all_ranks(self.state.step):
            raise RuntimeError("ranks resumed from different steps; the results folder must be shared by every node")
        torch.set_rng_state(payload["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in payload["rng"]:
            torch.cuda.set_rng_state(payload["rng"]["cuda"], self.device)
        if distributed.is_main_process():
            self._prune_best_files(keep=self.state.best_step, newer_than=self.state.step)
        log.info("resumed %s at step %d (best step %d)", self.run_dir, self.state.step, self.state.best_step)
        return self.state.step

    def _restore_best(self) -> None:
        """Put the best weights into the model (memory copy, else the best checkpoint on disk)."""
        if self.state.best_step == 0:  # diverged before any validation improved: nothing to restore
            return
        weights = self.best_weights
        if weights is None:
            path = self._best_path(self.state.best_step)
            if not path.is_file():
                raise RuntimeError(f"best checkpoint {path} is missing; delete {self.run_dir} to retrain")
            payload = torch.load(path, map_location="cpu", weights_only=True)
            if int(payload["step"]) != self.state.best_step:
                raise RuntimeError(f"{path} holds step {payload['step']}, expected {self.state.best_step}")
            weights = payload["model"]
            self.best_weights = weights
        self.model.load_state_dict(weights)

    def _make_scheduler(self):
        config = self.config
        if config.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=config.steps,
                                                              eta_min=config.cosine_eta_min)
        if config.schedule == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="min", factor=config.plateau_factor,
                                                              patience=config.plateau_patience,
                                                              min_lr=config.plateau_min_lr)
        return None
