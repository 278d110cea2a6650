#!/usr/bin/env python
"""SimCLR training throughput on synthetic data: the full step (views on the GPU, forward, NT-Xent, backward, AdamW).

    python benchmarks/simclr_throughput.py --device cuda                      # ResNet-18 and ResNet-50 at 224, bf16
    python benchmarks/simclr_throughput.py --device cpu --archs resnet18 --image-size 32 --batch-size 8 --steps 2

Prints, per architecture: images/s (an image = one pair of views), views/s, step time, the share
of the step spent making views, model GFLOP per view (forward + backward, counted by
torch.utils.flop_counter) and the achieved TFLOP/s against the GPU's dense bf16 peak, i.e. the
theoretical images/s ceiling. Uses the same modules as `cli.py pretrain` (pretrained/ssl).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from pretrained.architectures import torchvision_backbone  # noqa: E402
from pretrained.encoder import Encoder, EncoderWithHead  # noqa: E402
from pretrained.ssl.augment import AugmentConfig, simclr_view  # noqa: E402
from pretrained.ssl.losses import nt_xent  # noqa: E402
from pretrained.ssl.model import build_head  # noqa: E402
from pretrained.torchvision_zoo import IMAGENET_PREPROCESSING  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment, from NVIDIA's data sheets.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, value in PEAK_BF16_TFLOPS.items():
        if fragment in name:
            return value
    return None


def build_model(arch: str, device: torch.device) -> EncoderWithHead:
    trunk, pool, dim = torchvision_backbone(arch)
    encoder = Encoder(arch, trunk, pool, dim, IMAGENET_PREPROCESSING, {})
    model = EncoderWithHead(encoder, build_head(dim, None, 128, 0)).to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model.train()


def make_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, size: int,
              device: torch.device, temperature: float = 0.2):
    """One SimCLR step on uint8 ``images`` [B, 3, S, S]; returns (loss, seconds spent making views)."""
    config = AugmentConfig()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None

    def step(generator: torch.Generator, timed: bool = False):
        if timed and device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        x = torch.cat([simclr_view(images, size, config, generator), simclr_view(images, size, config, generator)])
        x = IMAGENET_PREPROCESSING.normalize(x)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
            if timed:
                torch.cuda.synchronize(device)
        view_seconds = time.perf_counter() - start
        if autocast is not None:
            with autocast:
                z = model(x)
        else:
            z = model(x)
        loss = nt_xent(*z.float().chunk(2), temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach(), view_seconds
    return step


def flops_per_view(model: torch.nn.Module, size: int, device: torch.device) -> float:
    """Forward + backward FLOPs of the model for one view (counted on a batch of 2 views)."""
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.randn(2, 3, size, size, device=device)
    counter = FlopCounterMode(display=False)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    with counter:
        if autocast is not None:
            with autocast:
                z = model(x)
        else:
            z = model(x)
        z.float().square().mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def measure(arch: str, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = build_model(arch, device)
    if args.compile:
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stored = int(round(args.image_size * 1.25))
    images = torch.randint(0, 256, (args.batch_size, 3, stored, stored), dtype=torch.uint8, device=device)
    step = make_step(model, optimizer, images, args.image_size, device)
    generator = torch.Generator(device=device).manual_seed(0)
    for _ in range(args.warmup):
        step(generator)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss, _ = step(generator)
    loss.item()  # waits for the GPU
    seconds = (time.perf_counter() - start) / args.steps
    view_share = sum(step(generator, timed=True)[1] for _ in range(3)) / 3 / seconds
    flops = flops_per_view(model if not args.compile else build_model(arch, device), args.image_size, device)
    images_per_second = args.batch_size / seconds
    result = {"arch": arch, "images_per_s": images_per_second, "views_per_s": 2 * images_per_second,
              "step_ms": 1000 * seconds, "views_share": view_share, "gflop_per_view": flops / 1e9,
              "achieved_tflops": 2 * images_per_second * flops / 1e12}
    peak = peak_tflops(device)
    if peak:
        result["peak_tflops"] = peak
        result["mfu"] = result["achieved_tflops"] / peak
        result["ceiling_images_per_s"] = peak * 1e12 / (2 * flops)
    if device.type == "cuda":
        result["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--archs", default="resnet18,resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=256, help="images per step (2 views each)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (adds compile time)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, bf16 autocast, channels_last")
    else:
        print(f"device: cpu ({torch.get_num_threads()} threads), torch {torch.__version__}, fp32")
    print(f"SimCLR step: 2 views/image at {args.image_size} px, batch {args.batch_size} images, AdamW"
          f"{', torch.compile' if args.compile else ''}")
    for arch in args.archs.split(","):
        r = measure(arch, args, device)
        line = (f"{arch:>9}: {r['images_per_s']:8.1f} images/s ({r['views_per_s']:.1f} views/s), step {r['step_ms']:.1f} ms, "
                f"views {100 * r['views_share']:.0f}% of step, {r['gflop_per_view']:.2f} GFLOP/view fwd+bwd, "
                f"{r['achieved_tflops']:.1f} TFLOP/s")
        if "mfu" in r:
            line += (f" = {100 * r['mfu']:.0f}% of {r['peak_tflops']:.0f} peak "
                     f"(ceiling {r['ceiling_images_per_s']:.0f} images/s)")
        if "max_memory_gib" in r:
            line += f", peak memory {r['max_memory_gib']:.1f} GiB"
        print(line, flush=True)


if __name__ == "__main__":
    main()
