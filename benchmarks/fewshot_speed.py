#!/usr/bin/env python
"""Seconds for 600 few-shot episodes on cached-size features (random 10k x 2048 by default).

    python benchmarks/fewshot_speed.py --device cuda          # the GPU figure
    python benchmarks/fewshot_speed.py --device cpu --n 2000  # quick CPU check

Runs the evaluator's own code (episode sampling + batched prototypes/distances) for each K,
after one warm-up, and prints seconds per K and in total.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluators.fewshot import FEWSHOT_DEFAULTS, run_few_shot  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, default=10_000, help="images (features) in the evaluation split")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=FEWSHOT_DEFAULTS["episodes"])
    parser.add_argument("--shots", type=int, nargs="+", default=FEWSHOT_DEFAULTS["shots"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, args.classes, args.n)
    x = torch.from_numpy(np.abs(rng.normal(size=(args.n, args.dim))).astype(np.float32)).to(device)  # ReLU-like GAP
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"features {args.n} x {args.dim}, {args.classes} classes, {args.episodes} episodes, "
          f"{FEWSHOT_DEFAULTS['n_way']}-way, {FEWSHOT_DEFAULTS['n_query']} queries, torch {torch.__version__}")
    run_few_shot(x, labels, args.classes, args.shots[0], FEWSHOT_DEFAULTS["n_way"], FEWSHOT_DEFAULTS["n_query"], 10, 0)
    sync()
    total = 0.0
    for shots in args.shots:
        times = []
        for repeat in range(args.repeats):
            start = time.perf_counter()
            accuracies, _ = run_few_shot(x, labels, args.classes, shots, FEWSHOT_DEFAULTS["n_way"],
                                         FEWSHOT_DEFAULTS["n_query"], args.episodes, seed=repeat,
                                         max_chunk_mb=FEWSHOT_DEFAULTS["max_chunk_mb"])
            sync()
            times.append(time.perf_counter() - start)
        best = min(times)
        total += best
        print(f"{shots:>3}-shot: {best:.3f} s for {args.episodes} episodes (best of {args.repeats}; "
              f"{args.episodes / best:.0f} episodes/s), mean accuracy {accuracies.mean():.3f} (random features: ~chance)")
    print(f"total for K in {args.shots}: {total:.3f} s")


if __name__ == "__main__":
    main()
