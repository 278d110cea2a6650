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
    """DataLoader workers: leave one core for the main process, at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA, none (fp32) on CPU."""
    return torch.bfloat16 if device.type == "cuda" else None
