#!/usr/bin/env python
"""Fine-tuning throughput (images/s) for ResNet-50 at 224 px with bf16 autocast, and its theoretical limit.

    python benchmarks/finetune_throughput.py --device cuda                       # one GPU, < 3 minutes on an H100
    torchrun --nproc_per_node 8 benchmarks/finetune_throughput.py --device cuda  # DDP, global batch split over GPUs
    python benchmarks/finetune_throughput.py --device cpu --arch resnet18 --image-size 64 --batch-size 8 \\
        --steps 3 --warmup 1 --trainer-steps 4                                  # smoke test on a CPU

Two measurements, both with the harness's own code:

* ``compute``: the fine-tune training step (encoder + linear head, SGD Nesterov, cross-entropy,
  bf16 autocast, channels_last) on one batch that stays on the GPU: the model's ceiling.
* ``trainer``: :class:`evaluators.training.Trainer` end to end on in-memory 256 px images with the
  ``transfer`` preset's augmentation (RandomResizedCrop 224 + flip, in DataLoader workers):
  what a real run gets, data pipeline included; with ``--jpeg-dir`` on JPEG files, PIL decoding
  in the workers included (a real dataset).

The theoretical limit is the GPU's dense bf16 peak divided by the training FLOPs per image,
~3 x the forward FLOPs (forward + backward ~ 2 x forward); ResNet-50 forward is ~4.1 GFLOPs (GMACs,
as usually quoted) at 224 px, scaled by (size / 224)^2.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark import distributed  # noqa: E402
from benchmark.device import autocast_dtype  # noqa: E402
from datasets.base import ArrayImageDataset, FileImageDataset  # noqa: E402
from evaluators.augment import AugmentedImages, DeviceAugmentedImages, train_augmentation  # noqa: E402
from evaluators.finetune import FINETUNE_DEFAULTS, EvalBatches, FineTuneModel, make_validator  # noqa: E402
from evaluators.training import TrainConfig, Trainer  # noqa: E402
from pretrained.encoder import LoadOptions  # noqa: E402
from pretrained.torchvision_zoo import random_encoder  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0,
                    "H100": 756.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0, "RTX 4090": 165.2}
FORWARD_GFLOPS_224 = {"resnet50": 4.1, "resnet18": 1.8, "densenet121": 2.9}


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "given"
    if device.type != "cuda":
        return None, "unknown for CPU"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value, f"data sheet ({key})"
    return None, f"unknown GPU '{name}': pass --peak-tflops"


def compute_throughput(model, device, batch: int, size: int, classes: int, steps: int, warmup: int, amp: bool) -> float:
    """Global images/s of the bare training step on a GPU-resident batch."""
    network = model
    if distributed.world_size() > 1:
        network = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-8)
    local = batch // distributed.world_size()
    x = torch.randn(local, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (local,), device=device)
    dtype = autocast_dtype(device) if amp else None
    model.train()

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = network(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    sync(device)
    distributed.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    distributed.barrier()
    return steps * batch / (time.perf_counter() - start)


def trainer_throughput(arch: str, device, batch: int, size: int, steps: int, workers: int, amp: bool,
                       jpeg_dir: Path | None = None, augment_on: str = "pil") -> tuple[float, float]:
    """(images/s of the Trainer's training time, wall seconds) on augmented in-memory images, or on the
    JPEG files of ``jpeg_dir`` (decoded by PIL in the workers, as a real dataset is)."""
    if jpeg_dir is not None:
        paths = sorted(str(p) for p in Path(jpeg_dir).glob("*.jpg"))
        if not paths:
            raise SystemExit(f"no .jpg files in {jpeg_dir}")
        n = len(paths)
        labels = np.arange(n) % 2
        table = pd.DataFrame({"image_id": [Path(p).stem for p in paths], "path": paths, "label": labels,
                              "group": [Path(p).stem for p in paths]})
        dataset = FileImageDataset("throughput-jpeg", table, ["a", "b"])
    else:
        rng = np.random.default_rng(0)
        n = 512
        images = rng.integers(0, 256, size=(n, 256, 256, 3), dtype=np.uint8)
        labels = np.arange(n) % 2
        table = pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "label": labels, "group": [f"i{i}" for i in range(n)]})
        dataset = ArrayImageDataset("throughput", table, ["a", "b"], images)
    encoder = random_encoder(arch, arch, LoadOptions())
    options = dict(FINETUNE_DEFAULTS)  # the transfer preset: RRC(224, bicubic) + HFlip
    augment = train_augmentation(options, size, encoder.preprocessing)
    if augment_on == "device":  # nvjpeg + the same seeded transforms on GPU tensors (what finetune does on CUDA)
        train = DeviceAugmentedImages(dataset, np.arange(n), augment, encoder.preprocessing, size, device, workers)
    else:
        train = AugmentedImages(dataset, np.arange(n), augment, encoder.preprocessing, size)
    val_rows = np.arange(min(64, n))
    validate = make_validator(EvalBatches(dataset, val_rows, encoder.preprocessing.with_input_size(size), 64, 0, cache=True),
                              labels[val_rows], 2, device, amp)
    config = TrainConfig(steps=steps, batch_size=batch, lr=0.01, weight_decay=1e-8, eval_every=steps, amp=amp,
                         num_workers=workers, schedule="cosine")
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        result = Trainer(FineTuneModel(encoder, 2, seed=0), train, labels, validate, config, Path(folder), device,
                         {"benchmark": True}).fit()
        wall = time.perf_counter() - start
    return result.images_per_second, wall


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="resnet50", choices=sorted(FORWARD_GFLOPS_224))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch (split over torchrun processes)")
    parser.add_argument("--steps", type=int, default=60, help="timed steps of the compute measurement")
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--trainer-steps", type=int, default=120, help="steps of the Trainer measurement (0 = skip)")
    parser.add_argument("--workers", type=int, default=min(16, max(1, (os.cpu_count() or 2) - 2)))
    parser.add_argument("--no-amp", action="store_true", help="fp32 instead of bf16 autocast")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN pick algorithms by timing")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak if the GPU is not in the table")
    parser.add_argument("--augment", choices=["pil", "device", "both"], default="pil",
                        help="train augmentation: PIL in workers, or on the device (needs --jpeg-dir on CUDA)")
    parser.add_argument("--jpeg-dir", type=Path, default=None,
                        help="measure the Trainer on these JPEG files (PIL-decoded in the workers) instead of in-memory images")
    args = parser.parse_args()
    device = distributed.init_from_env(torch.device(args.device))
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    amp = not args.no_amp and device.type == "cuda"
    report = distributed.is_main_process()
    encoder = random_encoder(args.arch, args.arch, LoadOptions())
    model = FineTuneModel(encoder, 1000, seed=0).to(device, memory_format=torch.channels_last)  # as the Trainer
    images_per_second = compute_throughput(model, device, args.batch_size, args.image_size, 1000, args.steps,
                                           args.warmup, amp)
    flops_per_image = 3 * FORWARD_GFLOPS_224[args.arch] * 1e9 * (args.image_size / 224) ** 2
    peak, source = peak_tflops(device, args.peak_tflops)
    world = distributed.world_size()
    if report:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(f"{args.arch} at {args.image_size} px, global batch {args.batch_size}, {world} process(es), "
              f"{'bf16 autocast' if amp else 'fp32'}, channels_last, device {name}, "
              f"torch {torch.__version__}")
        print(f"compute (GPU-resident batch): {images_per_second:,.0f} images/s "
              f"({images_per_second / world:,.0f} per GPU), {images_per_second * flops_per_image / 1e12:,.1f} TFLOP/s achieved")
        if peak:
            limit = peak * 1e12 * world / flops_per_image
            print(f"theoretical limit: {limit:,.0f} images/s = {world} x {peak:g} TFLOP/s bf16 peak ({source}) / "
                  f"(3 x {FORWARD_GFLOPS_224[args.arch]:g} GFLOPs x ({args.image_size}/224)^2 per image); "
                  f"achieved {100 * images_per_second / limit:.1f} % of it")
        else:
            print(f"theoretical limit: n/a ({source})")
    if args.trainer_steps > 0:
        del model
        source = f"JPEG files in {args.jpeg_dir}" if args.jpeg_dir else "in-memory 256 px images"
        for augment_on in (["pil", "device"] if args.augment == "both" else [args.augment]):
            trainer_ips, wall = trainer_throughput(args.arch, device, args.batch_size, args.image_size,
                                                   args.trainer_steps, args.workers, amp, args.jpeg_dir, augment_on)
            where = f"in {args.workers} workers (PIL)" if augment_on == "pil" else "on the device (nvjpeg + tensors)"
            if report:
                print(f"trainer on {source} (RRC + flip {where}, {args.trainer_steps} steps): {trainer_ips:,.0f} "
                      f"images/s of training time ({wall:.1f} s wall incl. start-up, 1 validation, checkpoint)",
                      flush=True)


if __name__ == "__main__":
    main()
