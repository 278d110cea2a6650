"""Device choice and the matching numeric settings."""
from __future__ import annotations

import os

import torch


def resolve_device(name: str | None = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else is passed to torch.device."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' requested but CUDA is not available; use --device cpu")
    return device


def default_workers() -> int:
    """DataLoader workers: leave one core for the main process, at most 8; none on <= 2 cores.

    On 2 cores a worker process only competes with the main process's two compute threads: the main
    job on the 2-core CPU took 6 min 59 s with 0 workers against 7 min 17 s with 1 (fine-tuning 75 s
    against 91 s, invariance 19 s against 24 s), with identical numbers (docs/speed.md).
    """
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores - 1)


def conv_memory_format(module: torch.nn.Module, device: torch.device) -> torch.memory_format:
    """Memory format of ``module``'s weights and input images: channels_last (faster convolutions), except on
    CUDA for networks with grouped (depthwise) convolutions, which stay NCHW.

    cuDNN builds a plan the first time it meets a convolution shape in a process; for EfficientNet-Lite0's
    depthwise convolutions in bf16 channels_last that took 2.6-5.1 s per forward shape and 15.9 s for the first
    training step on an H200, against 0.15-0.50 s and 0.53 s in NCHW; steady-state training is no slower in NCHW
    (benchmarks/first_call_cost.py, docs/speed.md).
    """
    if device.type == "cuda" and any(isinstance(m, torch.nn.Conv2d) and m.groups > 1 for m in module.modules()):
        return torch.contiguous_format
    return torch.channels_last


def default_batch_size(device: torch.device) -> int:
    """Feature-extraction batch: 256 on CUDA (ResNet-50 bf16 on an H200: 15.5k images/s against 13.3k
    at 64, docs/speed.md), 64 on the CPU (no gain from larger batches, less memory)."""
    return 256 if device.type == "cuda" else 64


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA, none (fp32) on CPU."""
    return torch.bfloat16 if device.type == "cuda" else None
