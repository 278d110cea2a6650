#!/usr/bin/env python
"""Speed of the saliency and deep-image-prior probes: occlusion maps/s and DIP iterations/s.

Runs the harness's own code paths (``evaluators.saliency_methods.occlusion_map`` and
``evaluators.dip.invert_features``) on a random-init encoder (weights do not change the speed), and
prints throughput, the achieved TFLOP/s (FLOPs counted with ``torch.utils.flop_counter``) and the
share of a peak you name (default: H100 SXM dense TF32, 494.7 TFLOP/s; PyTorch runs fp32
convolutions as TF32 on cuDNN by default). Example (H100, < 3 minutes)::

    python benchmarks/probes_speed.py --device cuda

CPU smoke run (seconds)::

    python benchmarks/probes_speed.py --device cpu --model resnet18-random --size 32 --maps 1 \
        --window 8 --stride 8 --dip-iterations 2 --parity-maps 0 --dip-generator small
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluators.dip import invert_features  # noqa: E402
from evaluators.dip_generator import SkipGenerator, noise_side  # noqa: E402
from evaluators.probe_common import frozen  # noqa: E402
from evaluators.saliency_methods import MissingDependencyError, occlusion_map, windows_per_image  # noqa: E402
from pretrained.encoder import LoadOptions  # noqa: E402
from pretrained.registry import ENCODERS  # noqa: E402

SMALL_GENERATOR = {"in_channels": 8, "channels": [8, 16, 16], "skip": [2, 2, 2], "filters": [3, 3, 3]}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_flops(module, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return float(counter.get_total_flops())


def time_occlusion(encoder, device, size: int, window: int, stride: int, ppe: int, maps: int,
                   warmup: bool = True) -> tuple[float, int]:
    """Seconds per map and windows per map, margin as the evaluator (input size + 2 (window - 1))."""
    side = size + 2 * (window - 1)
    image = torch.randn(3, side, side, device=device)
    if warmup:  # cuDNN autotuning for this batch shape, captum import
        occlusion_map(encoder, image, window, stride, perturbations_per_eval=ppe)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(maps):
        occlusion_map(encoder, image, window, stride, perturbations_per_eval=ppe)
    synchronize(device)
    return (time.perf_counter() - start) / maps, windows_per_image(side, window, stride)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="resnet50-random")
    parser.add_argument("--size", type=int, default=224, help="encoder input size (map size)")
    parser.add_argument("--maps", type=int, default=3, help="occlusion maps timed per setting")
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--stride", type=int, default=5, help="the evaluator's default; parity is 1")
    parser.add_argument("--ppe", type=int, nargs="+", default=[64, 256], help="perturbations_per_eval values")
    parser.add_argument("--parity-maps", type=int, default=1, help="stride-1 maps timed (0 to skip)")
    parser.add_argument("--dip-iterations", type=int, default=100)
    parser.add_argument("--dip-generator", choices=["parity", "small"], default="parity")
    parser.add_argument("--peak-tflops", type=float, default=494.7, help="peak for the utilisation figure")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    encoder = ENCODERS.get(args.model).build(LoadOptions()).to(device).eval()
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; torch {torch.__version__}; "
          f"model {args.model}; input {args.size} px; fp32 (cuDNN TF32 allowed: {torch.backends.cudnn.allow_tf32})")

    with frozen(encoder):
        try:
            side = args.size + 2 * (args.window - 1)
            flops = forward_flops(encoder, torch.randn(1, 3, side, side, device=device))
            for ppe in args.ppe:
                seconds, windows = time_occlusion(encoder, device, args.size, args.window, args.stride, ppe, args.maps)
                rate = windows / seconds
                tflops = rate * flops / 1e12
                print(f"occlusion window {args.window} stride {args.stride} on {side} px ({windows} windows/map), "
                      f"perturbations_per_eval {ppe}: {1 / seconds:.3f} maps/s, {rate:,.0f} windows/s, "
                      f"{tflops:.1f} TFLOP/s = {100 * tflops / args.peak_tflops:.1f}% of {args.peak_tflops} peak")
            if args.parity_maps:
                ppe = args.ppe[-1]  # already warmed up above (same batch shape)
                seconds, windows = time_occlusion(encoder, device, args.size, args.window, 1, ppe, args.parity_maps,
                                                  warmup=False)
                print(f"occlusion PARITY window {args.window} stride 1 on {side} px ({windows} windows/map), "
                      f"perturbations_per_eval {ppe}: {seconds:.1f} s/map ({1 / seconds:.4f} maps/s); "
                      f"20 images: {20 * seconds / 60:.1f} min")
        except MissingDependencyError as error:
            print(f"occlusion: skipped ({error})")

        generator = None if args.dip_generator == "parity" else SMALL_GENERATOR
        image = torch.rand(3, args.size, args.size, device=device)
        invert_features(encoder, image, iterations=3, generator=generator)  # warm-up
        synchronize(device)
        start = time.perf_counter()
        inversion = invert_features(encoder, image, iterations=args.dip_iterations, generator=generator,
                                    log_every=max(1, args.dip_iterations))
        synchronize(device)
        seconds = time.perf_counter() - start
        rate = args.dip_iterations / seconds
        net = SkipGenerator(**(generator or {})).to(device)
        noise = noise_side(args.size, net.scales)
        step_flops = 3 * (forward_flops(net, torch.rand(1, net.in_channels, noise, noise, device=device))
                          + forward_flops(encoder, torch.rand(1, 3, args.size, args.size, device=device)))
        tflops = rate * step_flops / 1e12
        print(f"dip {args.dip_generator} generator (noise {noise} px) + {args.model} feature_map at {args.size} px: "
              f"{rate:.1f} iterations/s ({tflops:.2f} TFLOP/s, ~3x forward FLOPs per step); 3000 iterations = "
              f"{3000 / rate:.0f} s per image; loss {inversion.curve[0][1]:.4g} -> {inversion.final_loss:.4g}")


if __name__ == "__main__":
    main()
