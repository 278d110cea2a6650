"""Fine-tuning: the whole encoder plus a linear head, trained end to end on the train split.

Presets (PROTOCOLS.md 1.3 and 9):

* ``transfer`` (= the defaults; ANTON ``finetune.py --early-stopping``): 5000 steps, batch 64,
  SGD Nesterov m 0.9, lr 1e-2, wd 1e-8, cosine per step, validation every 200 steps on the
  dataset's primary metric, patience 3, RandomResizedCrop(224, bicubic) + HFlip.
* ``skin-lesion`` (CHAVES ``finetuning_ssl.py``; run it with a ResNet-50 encoder for parity):
  SGD m 0.9, lr 1e-2, wd 1e-3, ReduceLROnPlateau(0.1, patience 10, min_lr 1e-5) on the validation
  loss, batch 32, up to 100 epochs, early stopping patience 22 on the validation loss,
  299 px HFlip/VFlip/RRC(scale 0.75-1)/Rotation 45/hue 0.2, 50-copy test-time augmentation.
  Unlike CHAVES, validation images are *not* augmented.
* ``quick``: the CPU main job (small images, a few hundred images' worth of steps).

Protocol details: ``lrs`` x ``wds`` is the search grid (wd = w / lr when ``wd_over_lr``, ANTON's
``--search`` parametrisation); each setting trains from a fresh copy of the encoder and the one
with the best validation score at its best checkpoint is tested (no retraining). The model
tested holds the best weights of that run (early stopping restores them). Evaluation inputs use
the encoder's own preprocessing (resize/crop policy, interpolation, normalisation) at the training
resolution; the training resolution is the preset's ``train_size`` (``null`` = the encoder's), and
``--image-size`` overrides both. Test-time augmentation (``tta_copies`` > 0) averages softmax
over copies made with the training augmentation, on the test split only.

Artifacts (``context.artifacts_dir``): ``run-XX/`` per grid setting (``last.pt`` for resuming,
``best-<step>.pt``, ``result.json``), ``best.pt`` (the selected model: encoder + head weights and
metadata) and ``test_predictions.npz``. A killed run resumes from ``last.pt``; a finished setting
is not retrained. Multi-GPU: see :mod:`evaluators.training` and docs/evaluators.md.

Multi-label datasets (ChestMNIST): one logit per finding, BCE with logits (:mod:`evaluators.objectives`),
sigmoid scores, AUC = mean over findings and ACC = mean label accuracy at 0.5 (``monitor`` auto =
auroc; ``balanced`` sampling needs one class per image and is refused).
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmark import distributed
from benchmark.atomic import atomic_torch_save
from benchmark.calibration import calibration_metrics
from benchmark.device import autocast_dtype, conv_memory_format, default_workers
from benchmark.image_batches import ImageBatches, resolve_decode, takes_files_as_images
from benchmark.metrics import METRIC_NAMES, MULTILABEL_METRIC_NAMES, evaluate_scores, point_metrics, subgroup_metrics
from benchmark.options import AnyOf, Bool, Choice, Float, Int, ListOf, exactly_one
from benchmark.predictions import image_predictions
from benchmark.records import write_json_atomic
from benchmark.workers import data_loader, start_worker_server
from datasets.base import ImageDataset
from evaluators.augment import AugmentedImages, DeviceAugmentedImages, train_augmentation
from evaluators.base import EvalContext, EvalOutput, EvaluatorSpec
from evaluators.objectives import output_scores, target_tensor, training_loss
from evaluators.registry import EVALUATORS
from evaluators.sampling import TTA_STREAM, derive_seed
from evaluators.training import TrainConfig, Trainer, Validation
from pretrained.encoder import Encoder
from pretrained.preprocessing import Preprocessing

log = logging.getLogger(__name__)

FINETUNE_DEFAULTS = {
    # budget: exactly one of steps / epochs (an epoch = ceil(n_train / batch) steps)
    "steps": 5000, "epochs": None, "batch_size": 64,
    # optimiser and search grid
    "lrs": [1e-2], "wds": [1e-8], "wd_over_lr": False, "momentum": 0.9, "nesterov": True,
    "schedule": "cosine", "cosine_eta_min": 0.0,
    "plateau_factor": 0.1, "plateau_patience": 10, "plateau_min_lr": 1e-5,
    # validation and early stopping: eval_every in steps or "epoch"; monitor "auto" = dataset metric, or "loss"
    "eval_every": 200, "patience": 3, "monitor": "auto", "checkpoint_every": None,
    # data
    "train_size": None, "rrc_scale": [0.08, 1.0], "rrc_interpolation": "bicubic",
    "hflip": True, "vflip": False, "rotation": 0, "hue": 0.0, "balanced": False, "tta_copies": 0,
    # numerics and bookkeeping
    "amp": True, "sync_bn": True, "eval_batch_size": 128, "n_boot": 1000, "save_best": True,
    "keep_run_checkpoints": False,
}
_STEPS_OR_EPOCH = AnyOf(Int(min=1), Choice("epoch"))
FINETUNE_SCHEMA = {
    "steps": Int(min=1, nullable=True), "epochs": Int(min=1, nullable=True), "batch_size": Int(min=1),
    "lrs": ListOf(Float(min=0, min_open=True)), "wds": ListOf(Float(min=0)), "wd_over_lr": Bool(),
    "momentum": Float(min=0, max=1, max_open=True), "nesterov": Bool(),
    "schedule": Choice("cosine", "plateau", "constant"), "cosine_eta_min": Float(min=0),
    "plateau_factor": Float(min=0, max=1, min_open=True, max_open=True), "plateau_patience": Int(min=0),
    "plateau_min_lr": Float(min=0),
    "eval_every": _STEPS_OR_EPOCH, "patience": Int(min=1, nullable=True), "monitor": Choice("auto", "loss", *dict.fromkeys(METRIC_NAMES + MULTILABEL_METRIC_NAMES)),
    "checkpoint_every": AnyOf(Int(min=1), Choice("epoch"), nullable=True),
    "train_size": Int(min=16, nullable=True),
    "rrc_scale": ListOf(Float(min=0, max=1, min_open=True), length=2, increasing=True, nullable=True),
    "rrc_interpolation": Choice("bicubic", "bilinear"), "hflip": Bool(), "vflip": Bool(),
    "rotation": Float(min=0, max=180), "hue": Float(min=0, max=0.5), "balanced": Bool(), "tta_copies": Int(min=0),
    "amp": Bool(), "sync_bn": Bool(), "eval_batch_size": Int(min=1), "n_boot": Int(min=1), "save_best": Bool(),
    "keep_run_checkpoints": Bool(),
}


def _nesterov_needs_momentum(options: dict) -> str | None:
    if options.get("nesterov") and not options.get("momentum"):
        return f"option 'nesterov' needs momentum > 0, got momentum={options.get('momentum')} (or -o nesterov=false)"
    return None

FINETUNE_PRESETS = {
    "transfer": {},
    "skin-lesion": {
        "steps": None, "epochs": 100, "batch_size": 32, "lrs": [1e-2], "wds": [1e-3], "schedule": "plateau",
        "eval_every": "epoch", "patience": 22, "monitor": "loss", "train_size": 299, "rrc_scale": [0.75, 1.0],
        "rrc_interpolation": "bilinear", "hflip": True, "vflip": True, "rotation": 45, "hue": 0.2, "tta_copies": 50,
    },
    "quick": {
        "steps": 16, "batch_size": 16, "lrs": [1e-2], "wds": [1e-4], "eval_every": 8, "patience": None,
        "train_size": 96, "rrc_scale": [0.5, 1.0], "vflip": True, "balanced": True, "eval_batch_size": 64,
        "n_boot": 500,
    },
}

# options that do not change the numbers (left out of checkpoint fingerprints)
_RUNTIME_OPTIONS = ("eval_batch_size", "n_boot", "save_best", "keep_run_checkpoints", "checkpoint_every")
EVAL_CACHE_BYTES = 1 << 30
# Bump when a code change alters the numbers of a training run: finished runs are then retrained.
FINETUNE_CODE_VERSION = 1  # validation inputs up to this size are preprocessed once and kept in memory


class FineTuneModel(nn.Module):
    """Encoder + linear head: network input [N, 3, H, W] -> logits [N, classes]."""

    def __init__(self, encoder: Encoder, n_classes: int, seed: int):
        super().__init__()
        self.encoder = encoder
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = nn.Linear(encoder.feature_dim, n_classes)
        for parameter in self.parameters():
            parameter.requires_grad_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


# -- evaluation -----------------------------------------------------------------------------------
class EvalBatches:
    """This rank's strided shard of some dataset rows as network-input batches, in row order.

    Pixels come from :class:`benchmark.image_batches.ImageBatches` (decoded-image cache, nvjpeg on
    CUDA or PIL threads) as uint8 at the preprocessing's geometry and are normalised on the device;
    with ``cache`` the uint8 batches are kept in memory (on the device) when they fit
    ``EVAL_CACHE_BYTES``, so repeated validations decode once.
    """

    def __init__(self, dataset: ImageDataset, rows: np.ndarray, preprocessing: Preprocessing, batch_size: int,
                 num_workers: int, cache: bool, *, device: torch.device = torch.device("cpu"), decode: str = "pil",
                 cache_dir: Path | None = None):
        self.total = len(rows)
        self.local_rows = np.asarray(rows)[distributed.strided_positions(self.total)]
        self.dataset, self.preprocessing = dataset, preprocessing
        self.batch_size, self.num_workers = batch_size, num_workers
        self.device, self.decode, self.cache_dir = device, decode, cache_dir
        size = preprocessing.input_size
        self.cache = cache and len(self.local_rows) * 3 * size * size <= EVAL_CACHE_BYTES
        self._pixels: list[torch.Tensor] | None = None
        self.sources: dict[str, int] = {}

    def __iter__(self):
        if self._pixels is not None:
            for pixels in self._pixels:
                yield self.preprocessing.input_from_uint8(pixels)
            return
        batches = ImageBatches(self.dataset, self.local_rows, self.preprocessing, device=self.device,
                               batch_size=self.batch_size, workers=self.num_workers, decode=self.decode,
                               cache_dir=self.cache_dir)
        kept = []
        for _, pixels in batches:
            if self.cache:
                kept.append(pixels)
            yield self.preprocessing.input_from_uint8(pixels)
        self.sources = dict(batches.stats)
        if self.cache:
            self._pixels = kept


def _forward(model: nn.Module, x: torch.Tensor, device: torch.device, amp: bool,
             memory_format: torch.memory_format) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if x.dim() == 4:
        x = x.contiguous(memory_format=memory_format)
    dtype = autocast_dtype(device) if amp else None
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        return model(x).float()


@torch.no_grad()
def predict_logits(model: nn.Module, batches: EvalBatches, n_classes: int, device: torch.device, amp: bool) -> torch.Tensor:
    """Logits [total, classes] of every row (gathered over ranks, in row order), on the CPU."""
    model.eval()
    memory_format = conv_memory_format(model, device)
    outputs = [_forward(model, x, device, amp, memory_format) for x in batches]
    local = torch.cat(outputs) if outputs else torch.zeros(0, n_classes, device=device)
    return distributed.gather_strided(local, batches.total).cpu()


@torch.no_grad()
def predict_tta(model: nn.Module, dataset: ImageDataset, rows: np.ndarray, augment, preprocessing: Preprocessing,
                size: int, copies: int, seed: int, batch_size: int, num_workers: int, n_classes: int,
                device: torch.device, amp: bool, multilabel: bool = False) -> torch.Tensor:
    """Mean softmax (multi-label: sigmoid) over ``copies`` seeded augmented copies of every row:
    float64 [total, classes] on the CPU."""
    model.eval()
    total = len(rows)
    local_rows = np.asarray(rows)[distributed.strided_positions(total)]
    images = AugmentedImages(dataset, local_rows, augment, preprocessing, size)
    per_batch = max(1, batch_size // copies)  # whole images per batch
    items = [[(p, derive_seed(seed, TTA_STREAM, int(local_rows[p]), c)) for p in range(start, min(start + per_batch, len(local_rows)))
              for c in range(copies)] for start in range(0, len(local_rows), per_batch)]
    loader = data_loader(images, batch_sampler=items, num_workers=num_workers)
    memory_format = conv_memory_format(model, device)
    outputs = []
    for x, _ in loader:
        probabilities = output_scores(_forward(model, x, device, amp, memory_format).double(), multilabel)
        outputs.append(probabilities.reshape(-1, copies, n_classes).mean(1))
    local = torch.cat(outputs) if outputs else torch.zeros(0, n_classes, dtype=torch.float64, device=device)
    return distributed.gather_strided(local, total).cpu()


def make_validator(batches: EvalBatches, labels: np.ndarray, n_classes: int, device: torch.device, amp: bool):
    """``validate(model) -> Validation`` on the validation split (identical on every rank).

    ``labels``: int [N], or a 0/1 [N, L] matrix (multi-label: BCE loss, sigmoid scores)."""
    targets, multilabel = target_tensor(labels), np.ndim(labels) == 2
    names = MULTILABEL_METRIC_NAMES if multilabel else METRIC_NAMES

    def validate(model: nn.Module) -> Validation:
        logits = predict_logits(model, batches, n_classes, device, amp).double()
        if not torch.isfinite(logits).all():  # a diverged model: never an improvement
            return Validation(math.inf, {name: math.nan for name in names})
        loss = float(training_loss(logits, targets, multilabel))
        metrics = point_metrics(labels, output_scores(logits, multilabel).numpy())
        return Validation(loss, metrics)
    return validate


# -- options --------------------------------------------------------------------------------------
def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def resolve_budget(options: dict, n_train: int) -> tuple[int, int, int | None]:
    """(steps, eval_every, checkpoint_every) in steps from the step/epoch options."""
    batch = int(options["batch_size"])
    if batch < 1:
        raise ValueError(f"finetune: batch_size must be >= 1, got {batch}")
    epoch = math.ceil(n_train / batch)
    if (options["steps"] is None) == (options["epochs"] is None):
        raise ValueError("finetune: give exactly one of steps and epochs (e.g. -o steps=1000 -o epochs=null)")
    steps = int(options["steps"]) if options["steps"] is not None else int(options["epochs"]) * epoch
    eval_every = epoch if options["eval_every"] == "epoch" else int(options["eval_every"])
    checkpoint = options["checkpoint_every"]
    checkpoint = None if checkpoint is None else (epoch if checkpoint == "epoch" else int(checkpoint))
    if steps < 1 or eval_every < 1:
        raise ValueError(f"finetune: the budget must give >= 1 step and eval_every >= 1 (steps {steps}, eval_every {eval_every})")
    return steps, eval_every, checkpoint


def search_grid(options: dict) -> list[tuple[float, float]]:
    """(lr, weight decay) pairs; with ``wd_over_lr`` the decay is w / lr (ANTON's search)."""
    lrs, wds = [float(v) for v in _as_list(options["lrs"])], [float(v) for v in _as_list(options["wds"])]
    if not lrs or not wds:
        raise ValueError("finetune: lrs and wds need at least one value each")
    return [(lr, wd / lr if options["wd_over_lr"] else wd) for lr, wd in itertools.product(lrs, wds)]


def resolve_monitor(options: dict, context: EvalContext) -> str:
    monitor = context.primary_metric() if options["monitor"] == "auto" else options["monitor"]
    names = MULTILABEL_METRIC_NAMES if context.dataset.is_multilabel else METRIC_NAMES
    if monitor != "loss" and monitor not in names:
        raise ValueError(f"finetune: monitor must be 'auto', 'loss' or one of {names} on {context.dataset.name}, "
                         f"got {options['monitor']!r}")
    return monitor


# -- the evaluator --------------------------------------------------------------------------------
def run_finetune(context: EvalContext, options: dict) -> EvalOutput:
    dataset, device = context.dataset, context.device
    encoder = context.encoder()
    n_classes = dataset.num_classes  # outputs: classes, or findings (one logit each) for multi-label data
    multilabel = dataset.is_multilabel
    if multilabel and options["balanced"]:
        raise ValueError(f"finetune: class-balanced sampling needs one class per image and {dataset.name} is "
                         f"multi-label; add -o balanced=false")
    train_rows, val_rows, test_rows = (context.indices(s) for s in ("train", "val", "test"))
    steps, eval_every, checkpoint_every = resolve_budget(options, len(train_rows))
    grid = search_grid(options)
    monitor = resolve_monitor(options, context)
    size = int(context.extraction.image_size or options["train_size"] or encoder.preprocessing.input_size)
    eval_preprocessing = (encoder.preprocessing if size == encoder.preprocessing.input_size
                          else encoder.preprocessing.with_input_size(size))
    augment = train_augmentation(options, size, encoder.preprocessing)
    workers = default_workers() if context.extraction.num_workers is None else context.extraction.num_workers
    amp = bool(options["amp"]) and device.type == "cuda"
    decode = resolve_decode(context.extraction.decode, device)  # validation and test inputs, and train decoding
    # JPEG files on CUDA: the same seeded augmentation on GPU-decoded tensors; else PIL in worker processes
    train_augment = "device" if decode == "nvjpeg" and takes_files_as_images(dataset) else "pil"
    if train_augment == "device":
        train_images = DeviceAugmentedImages(dataset, train_rows, augment, encoder.preprocessing, size, device, workers)
    else:
        train_images = AugmentedImages(dataset, train_rows, augment, encoder.preprocessing, size)
        if workers > 0:
            start_worker_server()  # its imports overlap with the validation decode below
    eval_images = {"device": device, "decode": decode, "cache_dir": context.extraction.cache_dir}
    val_batches = EvalBatches(dataset, val_rows, eval_preprocessing, int(options["eval_batch_size"]), workers, cache=True,
                              **eval_images)
    validate = make_validator(val_batches, dataset.targets[val_rows], n_classes, device, amp)
    fingerprint = {
        "options": {k: v for k, v in options.items() if k not in _RUNTIME_OPTIONS},
        "encoder": encoder.name, "weights_sha256": encoder.provenance.get("weights_sha256"),
        "dataset": dataset.manifest_hash(), "splits": context.splits.sha256, "seed": context.seed,
        "train_size": size, "eval_preprocessing": eval_preprocessing.to_dict(), "monitor": monitor,
        "code_version": FINETUNE_CODE_VERSION, "eval_decode": decode, "train_augment": train_augment,
    }
    artifacts = context.artifacts_dir
    runs: list[dict] = []
    best_index: int | None = None
    best_weights: dict | None = None  # the best run's weights when this process trained it
    for index, (lr, wd) in enumerate(grid):
        run_dir = artifacts / f"run-{index:02d}"
        run_fingerprint = {**fingerprint, "lr": lr, "wd": wd}
        done, weights = _finished_run(run_dir, run_fingerprint), None
        if done is None:
            log.info("finetune %s on %s: run %d/%d (lr %g, wd %g)", encoder.name, dataset.name, index + 1, len(grid), lr, wd)
            config = TrainConfig(
                steps=steps, batch_size=int(options["batch_size"]), lr=lr, weight_decay=wd, eval_every=eval_every,
                momentum=float(options["momentum"]), nesterov=bool(options["nesterov"]), schedule=options["schedule"],
                cosine_eta_min=float(options["cosine_eta_min"]), plateau_factor=float(options["plateau_factor"]),
                plateau_patience=int(options["plateau_patience"]), plateau_min_lr=float(options["plateau_min_lr"]),
                patience=None if options["patience"] is None else int(options["patience"]), monitor=monitor,
                checkpoint_every=checkpoint_every, balanced=bool(options["balanced"]), seed=context.seed,
                amp=amp, sync_bn=bool(options["sync_bn"]), num_workers=workers, multilabel=multilabel)
            model = FineTuneModel(context.fresh_encoder(), n_classes, seed=derive_seed(context.seed, index))
            progress = (context.progress(f"finetune {encoder.name} on {dataset.name} ({index + 1}/{len(grid)})", steps)
                        if context.progress is not None else None)
            # the sampler reads labels for class-balanced sampling only (refused above for multi-label data)
            sampler_labels = np.zeros(len(train_rows), np.int64) if multilabel else dataset.labels[train_rows]
            trainer = Trainer(model, train_images, sampler_labels, validate, config, run_dir, device,
                              run_fingerprint, progress=progress)
            result = trainer.fit()
            weights = trainer.best_weights
            del trainer, model  # free the device before the next setting
            done = {"fingerprint": json.dumps(run_fingerprint, sort_keys=True, default=str), "lr": lr, "wd": wd,
                    "best_step": result.best_step, "best_score": result.best_score, "steps_run": result.steps_run,
                    "stopped_early": result.stopped_early, "history": result.history,
                    "train_seconds": result.train_seconds, "eval_seconds": result.eval_seconds,
                    "images_per_second": result.images_per_second, "resumed_from": result.resumed_from,
                    "diverged": result.diverged}
            if distributed.is_main_process():
                write_json_atomic(run_dir / "result.json", done)
        runs.append(done)
        usable = done["best_step"] > 0  # a run that diverged before any validation has no weights
        if usable and (best_index is None or done["best_score"] > runs[best_index]["best_score"]):  # ties: first
            best_index, best_weights = index, weights
    if best_index is None:
        raise ValueError(f"finetune: every setting of the grid {grid} diverged before its first validation; "
                         f"lower the learning rate (-o lrs=[...])")
    chosen = runs[best_index]
    weights = _selected_weights(artifacts, best_index, chosen, best_weights, fingerprint)
    model = FineTuneModel(context.fresh_encoder(), n_classes, seed=0)
    model.load_state_dict(weights)
    model.to(device, memory_format=conv_memory_format(model, device))
    if distributed.is_main_process():
        if options["save_best"]:
            atomic_torch_save({"format": 1, "fingerprint": json.dumps(fingerprint, sort_keys=True, default=str),
                          "run": best_index, "lr": chosen["lr"], "wd": chosen["wd"], "best_step": chosen["best_step"],
                          "model": weights, "encoder": encoder.name, "classes": dataset.classes, "train_size": size,
                          "eval_preprocessing": eval_preprocessing.to_dict()}, artifacts / "best.pt")
        if options["save_best"] and not options["keep_run_checkpoints"]:  # best.pt now holds what a rerun needs
            for run_index in range(len(grid)):
                for path in (artifacts / f"run-{run_index:02d}").glob("*.pt"):
                    path.unlink(missing_ok=True)
    distributed.barrier()
    # test: once, with the selected best weights
    copies = int(options["tta_copies"])
    if copies > 0:
        probabilities = predict_tta(model, dataset, test_rows, augment, encoder.preprocessing, size, copies,
                                    context.seed, int(options["eval_batch_size"]), workers, n_classes, device, amp,
                                    multilabel).numpy()
    else:
        logits = predict_logits(model, EvalBatches(dataset, test_rows, eval_preprocessing, int(options["eval_batch_size"]),
                                                   workers, cache=False, **eval_images), n_classes, device, amp)
        probabilities = output_scores(logits.double(), multilabel).numpy()
    test_labels = dataset.targets[test_rows]
    metrics = evaluate_scores(test_labels, probabilities, n_boot=int(options["n_boot"]), seed=context.seed)
    if not multilabel:  # ECE is a single-label notion
        val_probabilities = torch.softmax(predict_logits(model, val_batches, n_classes, device, amp).double(), dim=1).numpy()
        metrics.update(calibration_metrics(dataset.labels[val_rows], val_probabilities, test_labels, probabilities,
                                           n_boot=int(options["n_boot"]), seed=context.seed))
    subgroups = subgroup_metrics(test_labels, probabilities, dataset.subgroups(test_rows), seed=context.seed)
    if distributed.is_main_process():
        _save_predictions(artifacts / "test_predictions.npz", dataset.ids[test_rows], test_labels, probabilities)
    images_trained = sum(r["steps_run"] - r["resumed_from"] for r in runs) * int(options["batch_size"])
    train_seconds = sum(r["train_seconds"] for r in runs)
    return EvalOutput(
        metrics=metrics, primary_metric=context.primary_metric(), subgroups=subgroups,
        resolved={"steps_budget": steps, "eval_every_steps": eval_every, "global_batch": int(options["batch_size"]),
                  "grid": [{"lr": lr, "wd": wd} for lr, wd in grid], "monitor": monitor, "tta_copies": copies,
                  "loss": "bce-with-logits" if multilabel else "cross-entropy",
                  "n_train": int(len(train_rows)), "n_val": int(len(val_rows)), "n_test": int(len(test_rows))},
        extra={"selected": {"run": best_index, "lr": chosen["lr"], "wd": chosen["wd"], "best_step": chosen["best_step"],
                            f"val_{monitor}": -chosen["best_score"] if monitor == "loss" else chosen["best_score"],
                            "steps_run": chosen["steps_run"], "stopped_early": chosen["stopped_early"]},
               "runs": [{**{k: r.get(k) for k in ("lr", "wd", "best_step", "steps_run", "stopped_early", "diverged")},
                         "best_score": r["best_score"] if math.isfinite(r["best_score"]) else None} for r in runs],
               "history": chosen["history"], "world_size": distributed.world_size(), "amp_bf16": amp,
               "train_size": size, "eval_preprocessing": eval_preprocessing.to_dict(), "eval_decode": decode,
               "train_augment": train_augment,
               "checkpoint": str(artifacts / "best.pt") if options["save_best"] else None,
               "predictions": str(artifacts / "test_predictions.npz")},
        cost={"images_per_second": images_trained / train_seconds if train_seconds > 0 and images_trained else float("nan"),
              "train_seconds": train_seconds, "validation_seconds": sum(r["eval_seconds"] for r in runs)},
        predictions=None if multilabel else image_predictions(dataset.ids[test_rows], test_labels, probabilities,
                                                               dataset.subgroups(test_rows)))


def _finished_run(run_dir: Path, fingerprint: dict) -> dict | None:
    """The result of a finished run with this fingerprint, else None."""
    path = run_dir / "result.json"
    found = distributed.all_agree(path.is_file())
    if not found:
        return None
    result = json.loads(path.read_text())
    if result.get("fingerprint") != json.dumps(fingerprint, sort_keys=True, default=str):
        log.warning("%s was written for other settings; retraining", path)
        return None
    return result


def _selected_weights(artifacts: Path, index: int, chosen: dict, in_memory: dict | None, fingerprint: dict) -> dict:
    """The selected run's best weights: from this process, else its checkpoint, else the cell's best.pt."""
    if in_memory is not None:
        return in_memory
    candidates = [artifacts / f"run-{index:02d}" / f"best-{int(chosen['best_step']):07d}.pt", artifacts / "best.pt"]
    for path in candidates:
        if path.is_file():
            payload = torch.load(path, map_location="cpu", weights_only=True)
            if path.name == "best.pt" and (payload.get("run") != index or
                                           payload.get("fingerprint") != json.dumps(fingerprint, sort_keys=True, default=str)):
                continue
            return payload["model"]
    raise RuntimeError(f"the best weights of run {index} are missing under {artifacts}; delete that folder to retrain")


def _save_predictions(path: Path, ids: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, ids=ids.astype(str), labels=labels, probabilities=probabilities)
    os.replace(tmp, path)


EVALUATORS.add("finetune", EvaluatorSpec(
    name="finetune", run=run_finetune, defaults=FINETUNE_DEFAULTS, presets=FINETUNE_PRESETS,
    option_schema=FINETUNE_SCHEMA, option_rules=(exactly_one("steps", "epochs"), _nesterov_needs_momentum),
    description="encoder + linear head fine-tuned with SGD, early stopping on val (presets: transfer, skin-lesion, quick)",
    benchmark_preset="quick", order=50, aliases=("fine-tune",), multilabel=True))
