#!/usr/bin/env python
"""What the first forward / training step of an encoder costs in a process, per new input shape.

    python benchmarks/first_call_cost.py --device cuda --encoders efficientnet-lite0 resnet18-random

The main job's first cells of an encoder took much longer than later cells with the same shapes
(docs/speed.md). For each encoder (by default bf16 autocast + channels_last on CUDA, the extraction's
and fine-tuning's settings; ``--memory-format``, ``--precision``, ``--no-cudnn`` try others) this times, in order, eval forwards at batch ``--batch`` (first, second),
at the remainder batch ``--tail`` (first, second), then SGD training steps (forward + backward)
at ``--train-batch`` (first, second, and the tenth); one table comes last.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.device import autocast_dtype  # noqa: E402
from pretrained.encoder import LoadOptions  # noqa: E402
from pretrained.registry import ENCODERS  # noqa: E402


def timed(device: torch.device, function) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--encoders", nargs="+", default=["efficientnet-lite0", "resnet18-random"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--tail", type=int, default=11)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--memory-format", choices=["channels_last", "contiguous"], default="channels_last")
    parser.add_argument("--precision", choices=["auto", "fp32"], default="auto", help="auto: bf16 autocast on CUDA")
    parser.add_argument("--no-cudnn", action="store_true", help="torch.backends.cudnn.enabled = False")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = autocast_dtype(device) if args.precision == "auto" else None
    memory_format = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    if args.no_cudnn:
        torch.backends.cudnn.enabled = False
    rows = []
    for name in args.encoders:
        start = time.perf_counter()
        encoder = ENCODERS.get(name).build(LoadOptions())
        build = time.perf_counter() - start
        encoder.eval().to(device)
        if device.type == "cuda":
            encoder.to(memory_format=memory_format)

        def forward(n: int) -> None:
            x = torch.randn(n, 3, args.size, args.size, device=device).contiguous(memory_format=memory_format)
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                encoder(x)

        row = {"encoder": name, "build s": build}
        row[f"fwd {args.batch} first"] = timed(device, lambda: forward(args.batch))
        row[f"fwd {args.batch} second"] = timed(device, lambda: forward(args.batch))
        row[f"fwd {args.tail} first"] = timed(device, lambda: forward(args.tail))
        row[f"fwd {args.tail} second"] = timed(device, lambda: forward(args.tail))
        head = torch.nn.Linear(encoder.feature_dim, 7).to(device)
        encoder.train()
        optimizer = torch.optim.SGD([*encoder.parameters(), *head.parameters()], lr=1e-3, momentum=0.9)

        def step() -> None:
            x = torch.randn(args.train_batch, 3, args.size, args.size, device=device)
            x = x.contiguous(memory_format=memory_format)
            y = torch.randint(0, 7, (args.train_batch,), device=device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = torch.nn.functional.cross_entropy(head(encoder(x)).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        row["train first"] = timed(device, step)
        row["train second"] = timed(device, step)
        for _ in range(7):
            step()
        row["train tenth"] = timed(device, step)
        rows.append(row)
        print(row, flush=True)
    from tabulate import tabulate
    print(f"\n{args.memory_format}, precision {args.precision}, cudnn {'off' if args.no_cudnn else 'on'}; {args.size} px, device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}, cudnn {torch.backends.cudnn.version()}")
    print(tabulate([{k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
                   headers="keys", tablefmt="github"))


if __name__ == "__main__":
    main()
