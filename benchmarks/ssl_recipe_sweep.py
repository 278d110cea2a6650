#!/usr/bin/env python
"""Sweep SimCLR settings for the main job's in-domain encoder on synthderm: random init vs SimCLR.

    python benchmarks/ssl_recipe_sweep.py --device cuda --sizes 48 64 --epochs 8 16 --batch-sizes 32 128
    python benchmarks/ssl_recipe_sweep.py --device cpu --sizes 32 --epochs 1 --batch-sizes 32 --max-runs 1  # smoke

Every combination of the given lists is pretrained from ``resnet18-random`` on the synthderm
train split (split seed 0, as the main job) and evaluated with the main job's linear (``quick``)
and kNN presets at each ``--eval-sizes`` resolution (the main job uses 128 px). ``cost`` is the
pretraining compute relative to the shipped recipe (epochs x image side squared), which is what
sets its time on the 2-core CPU of the main job. Prints one row per run and writes a CSV.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64])
    parser.add_argument("--epochs", type=int, nargs="+", default=[6])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--lrs", type=float, nargs="+", default=[2e-3])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.5])
    parser.add_argument("--crop-mins", type=float, nargs="+", default=[0.2])
    parser.add_argument("--jitters", type=float, nargs="+", default=[0.5])
    parser.add_argument("--eval-sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--max-runs", type=int, default=None)
    parser.add_argument("--no-random", action="store_true", help="skip the random-init baseline row")
    parser.add_argument("--tag", default="a", help="name prefix of this sweep's encoders (sweep-TAG-N)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", type=Path, default=None, help="cache + results folder (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=Path("ssl_recipe_sweep.csv"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ssl-sweep-"))
    os.environ["MEDTRANSFER_CACHE"] = str(work / "cache")  # before the harness reads it
    import torch
    from benchmark.device import resolve_device
    from benchmark.runner import Cell, Runner, RunSettings
    from evaluators.base import ExtractionSettings
    from pretrained.encoder import LoadOptions
    from pretrained.ssl.augment import AugmentConfig
    from pretrained.ssl.pipeline import pretrain_and_register
    from pretrained.ssl.recipes import MAIN_JOB_CONFIG
    from pretrained.ssl.trainer import PretrainConfig

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    results = work / "results"
    base_cost = MAIN_JOB_CONFIG.epochs * MAIN_JOB_CONFIG.image_size ** 2
    runners = {size: Runner(RunSettings(results_dir=results / f"eval{size}", extraction=ExtractionSettings(
        device=device, cache_dir=work / "cache", batch_size=256, num_workers=0, image_size=size),
        load_options=LoadOptions(), seed=0, overwrite=True)) for size in args.eval_sizes}

    def evaluate(encoder: str) -> dict[str, float]:
        scores = {}
        for size, runner in runners.items():
            for evaluator, preset in (("linear", "quick"), ("knn", None)):
                record = runner.run(Cell(encoder, "synthderm", evaluator, preset=preset)).record
                scores[f"{evaluator}@{size}"] = record.metrics["balanced_accuracy"]["value"]
        return scores

    rows = []
    if not args.no_random:
        rows.append({"name": "resnet18-random", "cost": 0.0, "seconds": 0.0, "final_loss": float("nan"),
                     **evaluate("resnet18-random")})
        print(rows[0], flush=True)
    grid = list(itertools.product(args.sizes, args.epochs, args.batch_sizes, args.lrs, args.temperatures,
                                  args.crop_mins, args.jitters))[:args.max_runs]
    for number, (size, epochs, batch, lr, temperature, crop_min, jitter) in enumerate(grid):
        name = f"sweep-{args.tag}-{number}"
        config = PretrainConfig(method="simclr", dataset="synthderm", init="resnet18-random", epochs=epochs,
                                image_size=size, batch_size=batch, temperature=temperature, lr=lr, split="train",
                                split_seed=0, seed=0,
                                augment=AugmentConfig(crop_scale=(crop_min, 1.0), jitter_strength=jitter))
        start = time.perf_counter()
        outcome = pretrain_and_register(name, config, results_dir=results / f"eval{args.eval_sizes[0]}",
                                        device=device, overwrite=True)
        row = {"name": name, "size": size, "epochs": epochs, "batch": batch, "lr": lr, "T": temperature,
               "crop_min": crop_min, "jitter": jitter, "cost": epochs * size ** 2 / base_cost,
               "seconds": time.perf_counter() - start, "final_loss": outcome.pretraining["final_loss"],
               **evaluate(name)}
        rows.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        write_rows(rows, args.out)  # after every run: a killed sweep keeps what it finished
    write_rows(rows, args.out)
    print(f"wrote {args.out}")


def write_rows(rows: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, keys)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
