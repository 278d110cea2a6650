"""``medmnist-v2``: the MedMNIST v2 ResNet training protocol (Yang et al., Scientific Data 2023).

Protocol (MedMNIST ``experiments/MedMNIST2D/train_and_eval_pytorch.py``), per seed:

* model: ResNet-18 / ResNet-50 trained end to end. At 28 px the paper's small-input variant
  (conv1 3x3 stride 1 padding 1, no max-pool; PyTorch default init, as MedMNIST's ``models.py``)
  with ``n_channels`` input channels (1 for grey flags); at 224 px torchvision's ResNet (its own
  init) on 28-px images resized up with nearest neighbour, grey replicated to 3 channels.
  ``init=encoder`` instead trains the cell's encoder (``--model``) + a linear head under the same
  protocol, with the encoder's own normalisation (transfer vs from-scratch).
* input: ``ToTensor`` then ``Normalize(mean=.5, std=.5)``; no augmentation.
* Adam lr 1e-3, batch 128 (shuffled, last batch kept), 100 epochs, lr x0.1 at epochs 50 and 75,
  cross-entropy (multi-label ChestMNIST: ``BCEWithLogitsLoss`` over the 14 findings, one output
  each). After every epoch the validation AUC is computed; the weights of the best epoch
  (strictly greater AUC, first wins) are kept as a deep copy of the state dict and restored for test.
* test metrics as the paper: AUC (binary: ROC AUC of the positive-class softmax score;
  multi-class: macro one-vs-rest; multi-label: mean over findings of the ROC AUC of the sigmoid)
  and ACC (argmax accuracy; multi-label: mean label accuracy of sigmoid > 0.5), via
  :mod:`benchmark.metrics` (MedMNIST's ``getAUC``/``getACC``).

Images are held as one uint8 tensor on the device; batches are sliced, converted and (for 224)
resized there, so no per-image PIL work happens in the training loop.
"""
from __future__ import annotations

import copy
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, resnet50

from benchmark.metrics import mean_sd, multilabel_per_label, point_metrics
from benchmark.options import Choice, Float, Int, ListOf
from benchmark.records import metric
from evaluators.base import EvalContext, EvalOutput, EvaluatorSpec
from evaluators.objectives import output_scores, target_tensor, training_loss
from evaluators.registry import EVALUATORS

log = logging.getLogger(__name__)

ARCHS = {"resnet18": resnet18, "resnet50": resnet50}
RANDOM_MODELS = {"resnet18-random": "resnet18", "resnet50-random": "resnet50"}

MEDMNIST_V2_DEFAULTS = {
    "init": "random",  # random: the paper's ResNet from --model resnet18-random/resnet50-random; encoder: --model + head
    "size": 28,  # 28: small-input ResNet on native images; 224: torchvision ResNet on images resized up (nearest)
    "epochs": 100,
    "batch_size": 128,
    "lr": 1e-3,
    "milestones": [0.5, 0.75],  # fractions of the epochs where the lr is multiplied by gamma
    "gamma": 0.1,
    "seeds": 3,  # seeds 0..seeds-1
    "eval_batch_size": 512,
}
MEDMNIST_V2_SCHEMA = {
    "init": Choice("random", "encoder"), "size": Int(min=16), "epochs": Int(min=1), "batch_size": Int(min=1),
    "lr": Float(min=0, min_open=True), "milestones": ListOf(Float(min=0, max=1, min_open=True), min_len=0, increasing=True),
    "gamma": Float(min=0, min_open=True), "seeds": Int(min=1), "eval_batch_size": Int(min=1),
}


def _paper_sizes_for_random_init(options: dict) -> str | None:
    if options.get("init") == "random" and options.get("size") not in (28, 224):
        return f"option 'size' must be 28 or 224 with init='random' (the paper's two models), got {options.get('size')}"
    return None


def small_input_resnet(arch: str, in_channels: int, n_classes: int) -> nn.Module:
    """MedMNIST's 28-px ResNet: conv1 3x3/1 pad 1, no max-pool, PyTorch default init. [N, C, 28, 28] -> [N, K]."""
    model = ARCHS[arch](num_classes=n_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    for module in model.modules():  # models.py (kuangliu-style) keeps PyTorch's default init
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.reset_parameters()
    return model


class EncoderClassifier(nn.Module):
    """Encoder (pooled features [N, D]) + linear head -> logits [N, K]."""

    def __init__(self, encoder: nn.Module, feature_dim: int, n_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(feature_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class DeviceImages:
    """All images of the cell as uint8 on the device; ``batch(idx)`` -> network input [B, C, S, S]."""

    def __init__(self, images: np.ndarray, device: torch.device, channels: int, size: int, normalize):
        array = torch.as_tensor(images if images.ndim == 4 else images[..., None], device=device)  # [N, H, W, c]
        self.images = array.permute(0, 3, 1, 2).contiguous()  # [N, c, H, W] uint8
        self.native = int(self.images.shape[-1])
        self.channels, self.size, self.normalize = channels, size, normalize

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.images[idx].float().div_(255.0)
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1) if x.shape[1] == 1 else x.mean(1, keepdim=True)
        if self.native != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="nearest")
        return self.normalize(x)


def half_normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.5


@torch.no_grad()
def predict_proba(model: nn.Module, images: DeviceImages, rows: torch.Tensor, batch_size: int,
                  multilabel: bool = False) -> np.ndarray:
    """Softmax probabilities [N, K] (multi-label: sigmoid [N, L]), float64, of ``rows``."""
    model.eval()
    out = [output_scores(model(images.batch(rows[i:i + batch_size])).float(), multilabel)
           for i in range(0, len(rows), batch_size)]
    return torch.cat(out).double().cpu().numpy()


def train_one_seed(build, images: DeviceImages, rows: dict[str, torch.Tensor], labels: torch.Tensor,
                   n_classes: int, options: dict, seed: int) -> dict:
    """One run of the protocol; returns test probabilities of the best-val-AUC epoch and the curve.

    ``labels``: int64 [N] (cross-entropy) or float [N, L] (multi-label, BCE with logits)."""
    multilabel = labels.dim() == 2
    torch.manual_seed(seed)
    model = build().to(labels.device)
    generator = torch.Generator().manual_seed(seed)
    epochs, batch = int(options["epochs"]), int(options["batch_size"])
    optimizer = torch.optim.Adam(model.parameters(), lr=float(options["lr"]))
    milestones = [int(round(f * epochs)) for f in options["milestones"]]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=float(options["gamma"]))
    train, val = rows["train"], rows["val"]
    val_y = labels[val].cpu().numpy()
    best_auc, best_epoch, best_state, curve = -np.inf, -1, None, []
    for epoch in range(epochs):
        model.train()
        order = train[torch.randperm(len(train), generator=generator).to(train.device)]
        total = 0.0
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            loss = training_loss(model(images.batch(idx)), labels[idx], multilabel)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        scheduler.step()
        val_auc = point_metrics(val_y, predict_proba(model, images, val, int(options["eval_batch_size"]),
                                                     multilabel))["auroc"]
        curve.append({"epoch": epoch + 1, "train_loss": total / len(order), "val_auroc": val_auc})
        if np.isfinite(val_auc) and val_auc > best_auc:
            best_auc, best_epoch = val_auc, epoch + 1
            best_state = copy.deepcopy(model.state_dict())  # a real copy, not a reference to the live weights
    if best_state is None:
        raise ValueError("validation AUC was undefined at every epoch (the val split needs both classes)")
    model.load_state_dict(best_state)
    proba = predict_proba(model, images, rows["test"], int(options["eval_batch_size"]), multilabel)
    return {"test_proba": proba, "best_epoch": best_epoch, "best_val_auroc": float(best_auc), "curve": curve,
            "model": model}


def _model_builder(context: EvalContext, options: dict, n_classes: int, in_channels: int):
    """(builder, channels, input size, normalize, description) for the chosen init."""
    size = int(options["size"])
    if options["init"] == "random":
        arch = RANDOM_MODELS.get(context.encoder_spec.name)
        if arch is None:
            raise ValueError(f"medmnist-v2 with init=random trains the paper's ResNet: use --model resnet18-random or "
                             f"resnet50-random (got '{context.encoder_spec.name}'); for a pretrained start use "
                             f"-o init=encoder")
        if size == 28:
            return (lambda: small_input_resnet(arch, in_channels, n_classes), in_channels, size, half_normalize,
                    f"{arch} small-input (conv1 3x3/1, no maxpool), {in_channels}-channel input")
        return (lambda: ARCHS[arch](num_classes=n_classes), 3, size, half_normalize,
                f"torchvision {arch}, 3-channel input resized to {size} (nearest)")
    if options["init"] == "encoder":
        base = context.encoder()
        return (lambda: EncoderClassifier(copy.deepcopy(base), base.feature_dim, n_classes), 3, size,
                base.preprocessing.normalize, f"encoder {base.name} + linear head, input {size} (nearest)")
    raise ValueError(f"medmnist-v2: init must be 'random' or 'encoder', got '{options['init']}'")


def run_medmnist_v2(context: EvalContext, options: dict) -> EvalOutput:
    dataset = context.dataset
    images = getattr(dataset, "images", None)
    if images is None:
        raise ValueError(f"medmnist-v2 needs an array dataset (medmnist:<flag>), got '{dataset.name}'")
    seeds = int(options["seeds"])
    if seeds < 1 or int(options["epochs"]) < 1:
        raise ValueError("medmnist-v2: seeds and epochs must be >= 1")
    if int(options["size"]) not in (28, 224) and options["init"] == "random":
        raise ValueError(f"medmnist-v2: size must be 28 or 224 for init=random, got {options['size']}")
    n_classes = dataset.num_classes  # outputs: classes, or findings (one logit each) for multi-label data
    in_channels = 1 if images.ndim == 3 else 3
    build, channels, size, normalize, description = _model_builder(context, options, n_classes, in_channels)
    device = context.device
    device_images = DeviceImages(images, device, channels, size, normalize)
    labels = target_tensor(dataset.targets, device)
    rows = {s: torch.as_tensor(context.indices(s), device=device) for s in ("train", "val", "test")}
    test_y = labels[rows["test"]].cpu().numpy()
    start = time.perf_counter()
    per_seed = []
    for seed in range(seeds):
        log.info("medmnist-v2 on %s: seed %d/%d (%s)", dataset.name, seed + 1, seeds, description)
        run = train_one_seed(build, device_images, rows, labels, n_classes, options, seed)
        scores = point_metrics(test_y, run["test_proba"])
        per_seed.append({"seed": seed, "auroc": scores["auroc"], "accuracy": scores["accuracy"],
                         "best_epoch": run["best_epoch"], "best_val_auroc": run["best_val_auroc"],
                         "curve": run["curve"]})
        if dataset.is_multilabel:  # each finding's AUC and ACC, for the record
            per_finding = multilabel_per_label(test_y, run["test_proba"])
            per_seed[-1]["per_finding"] = {name: dict(zip(dataset.classes, v)) for name, v in per_finding.items()}
    seconds = time.perf_counter() - start
    metrics = {}
    for name in ("auroc", "accuracy"):
        summary = mean_sd([s[name] for s in per_seed])
        metrics[name] = metric(summary["mean"], None, sd=summary["sd"], n_seeds=summary["n"], per_seed=summary["values"])
    return EvalOutput(
        metrics=metrics, primary_metric="auroc",
        resolved={"model": description, "seeds": list(range(seeds)), "input_size": size, "native_size": device_images.native,
                  "input_channels": channels, "loss": "bce-with-logits" if dataset.is_multilabel else "cross-entropy",
                  "milestones_epochs": [int(round(f * int(options["epochs"])))
                                                                    for f in options["milestones"]],
                  "best_epochs": [s["best_epoch"] for s in per_seed], "split_source": context.splits.source,
                  "n_train": int(len(rows["train"])), "n_val": int(len(rows["val"])), "n_test": int(len(test_y))},
        extra={"per_seed": per_seed, "md5": dataset.info.get("md5")},
        cost={"seconds": seconds, "train_images_per_second":
              seeds * int(options["epochs"]) * len(rows["train"]) / max(seconds, 1e-9)})


EVALUATORS.add("medmnist-v2", EvaluatorSpec(
    name="medmnist-v2", run=run_medmnist_v2, defaults=MEDMNIST_V2_DEFAULTS, option_schema=MEDMNIST_V2_SCHEMA,
    option_rules=(_paper_sizes_for_random_init,),
    presets={"quick": {"epochs": 3, "seeds": 1}},
    description="MedMNIST v2 paper protocol: ResNet-18/50 from scratch (or -o init=encoder), Adam 1e-3, "
                "100 epochs, best val AUC; test AUC/ACC over seeds",
    benchmark_preset=None, order=90, multilabel=True))
