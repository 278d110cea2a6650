#!/usr/bin/env python
"""HAM10000: SimCLR from random init for a time budget, then linear probe and kNN, random init vs SimCLR.

    python benchmarks/ham10000_ssl.py --root data/ham10000 --budget 420          # H100: one 10-minute command
    python benchmarks/ham10000_ssl.py --root data/ham10000 --device cpu --limit 300 --image-size 32 \\
        --budget 5 --batch-size 32 --workers 1                                     # CPU smoke test

The images come in through the registered ``ham10000`` dataset (7-class dx, grouped by lesion),
or with ``--dataset csv`` through the generic ``csv`` dataset: a CSV written from
``<root>/HAM10000_metadata.csv`` with image=images/<image_id>.jpg, label=dx, group=lesion_id.
Splits are the harness's grouped, stratified, seeded splits (no lesion in two splits); SimCLR
sees the train split only. The number of epochs is set from a short throughput calibration so
pretraining fits ``--budget`` seconds (the cosine schedule needs the length up front); both
encoders are evaluated at the pretraining resolution. Prints each phase's seconds and, per
encoder, linear-probe and kNN balanced accuracy / accuracy / AUROC with bootstrap 95% CIs.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="HAM10000 folder (HAM10000_metadata.csv, images/)")
    parser.add_argument("--work", type=Path, default=None, help="results + cache folder (default: a temp folder)")
    parser.add_argument("--dataset", choices=["ham10000", "csv"], default="ham10000",
                        help="the registered ham10000 dataset (7-class dx), or the generic csv route")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--budget", type=float, default=420.0, help="pretraining seconds (calibrated)")
    parser.add_argument("--max-epochs", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None, help="use about N images, the first rows of each class, via the csv route (smoke tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--linear-preset", default=None, help="linear evaluator preset (e.g. quick)")
    return parser.parse_args()


def write_csv(root: Path, out: Path, limit: int | None) -> Path:
    import pandas as pd
    meta = pd.read_csv(root / "HAM10000_metadata.csv")
    if limit:  # a small subset with every class (smoke tests)
        meta = meta.groupby("dx", group_keys=False).head(max(3, limit // meta["dx"].nunique()))
    frame = pd.DataFrame({"image": [str((root / "images" / f"{i}.jpg").resolve()) for i in meta["image_id"]],
                          "label": meta["dx"], "group": meta["lesion_id"]})
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    return out


def calibrate_epoch_seconds(arch: str, n_train: int, args: argparse.Namespace, device) -> float:
    """Seconds per epoch of SimCLR on ``n_train`` images, from timed steps on synthetic images."""
    import torch
    from benchmarks.simclr_throughput import build_model, make_step
    model = build_model(arch, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = min(args.batch_size, n_train)
    stored = int(round(1.25 * args.image_size))
    images = torch.randint(0, 256, (batch, 3, stored, stored), dtype=torch.uint8, device=device)
    step = make_step(model, optimizer, images, args.image_size, device)
    generator = torch.Generator(device=device).manual_seed(0)
    for _ in range(3):
        step(generator)
    steps = 10 if device.type == "cuda" else 1
    loss, _ = step(generator)
    loss.item()
    start = time.perf_counter()
    for _ in range(steps):
        loss, _ = step(generator)
    loss.item()
    per_step = (time.perf_counter() - start) / steps
    del model, optimizer, images
    return per_step * math.ceil(n_train / batch)


def main() -> None:
    args = parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ham-ssl-"))
    os.environ["MEDTRANSFER_CACHE"] = str(work / "cache")  # before the harness reads it
    import numpy as np
    import torch
    from benchmark.device import default_workers, resolve_device
    from benchmark.runner import Cell, Runner, RunSettings
    from datasets.registry import DATASETS
    from evaluators.base import ExtractionSettings
    from pretrained.encoder import LoadOptions
    from pretrained.ssl.pipeline import pretrain_and_register, select_images
    from pretrained.ssl.trainer import PretrainConfig

    timings: dict[str, float] = {}
    start = time.perf_counter()
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    workers = default_workers() if args.workers is None else args.workers
    results = work / "results"
    if args.dataset == "csv" or args.limit:
        dataset_name, root = "csv", write_csv(args.root, work / "ham10000.csv", args.limit)
    else:
        dataset_name, root = "ham10000", args.root
    dataset = DATASETS.get(dataset_name).build(root, {})
    data = select_images(dataset, "train", results, args.seed)
    print(f"{dataset.name}: {len(dataset)} images, {dataset.num_classes} classes, {len(data.indices)} in train "
          f"(SimCLR sees these), device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}", flush=True)
    timings["setup"] = time.perf_counter() - start

    t = time.perf_counter()
    epoch_seconds = calibrate_epoch_seconds(args.arch, len(data.indices), args, device)
    epochs = int(max(1, min(args.max_epochs, args.budget // max(epoch_seconds, 1e-6))))
    timings["calibration"] = time.perf_counter() - t
    print(f"calibration: ~{epoch_seconds:.2f} s/epoch -> {epochs} epochs for a {args.budget:.0f} s budget", flush=True)

    name = f"{args.arch}-simclr-{dataset.name}-bench"
    config = PretrainConfig(method="simclr", dataset=dataset_name, init=f"{args.arch}-random", epochs=epochs,
                            image_size=args.image_size, batch_size=args.batch_size, temperature=args.temperature,
                            lr=args.lr, split="train", split_seed=args.seed, seed=args.seed)
    t = time.perf_counter()
    last = {"t": t}

    def report(epoch: int, loss: float) -> None:
        if epoch == 1 or epoch == epochs or epoch % max(1, epochs // 10) == 0:
            print(f"  epoch {epoch}/{epochs}: loss {loss:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
        last["t"] = time.perf_counter()
    outcome = pretrain_and_register(name, config, results_dir=results, device=device, roots={dataset_name: root},
                                    num_workers=workers, on_epoch_end=report, overwrite=True)
    timings["pretraining"] = time.perf_counter() - t
    views = outcome.pretraining.get("views_per_second_last_session")
    print(f"pretrained {name}: final loss {outcome.pretraining['final_loss']:.4f}, "
          f"{outcome.pretraining['seconds']:.0f} s, {views / 2 if views else float('nan'):.0f} images/s (incl. decode)",
          flush=True)

    t = time.perf_counter()
    settings = RunSettings(results_dir=results, extraction=ExtractionSettings(
        device=device, cache_dir=work / "cache", batch_size=256, num_workers=workers, image_size=args.image_size),
        load_options=LoadOptions(), roots={dataset_name: root}, seed=args.seed, overwrite=True)
    runner = Runner(settings)
    rows = []
    for encoder in (f"{args.arch}-random", name):
        linear = runner.run(Cell(encoder, dataset_name, "linear", preset=args.linear_preset)).record
        rows.append({"encoder": encoder, "linear": linear.metrics, "C": linear.protocol["resolved"]["C"],
                     "knn": runner.run(Cell(encoder, dataset_name, "knn")).record.metrics})
    timings["evaluation"] = time.perf_counter() - t

    def show(metrics: dict, key: str) -> str:
        entry = metrics.get(key, {})
        value, ci = entry.get("value"), entry.get("ci") or [float("nan")] * 2
        return "n/a" if value is None else f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    print(f"\nHAM10000 test split, {args.image_size} px, bootstrap 95% CIs; SimCLR {epochs} epochs "
          f"(batch {args.batch_size}, lr {args.lr}, T {args.temperature}); kNN evaluator defaults")
    print(f"{'encoder':<34} {'linear bal-acc':>22} {'linear AUROC':>22} {'kNN bal-acc':>22} {'kNN AUROC':>22}")
    for row in rows:
        print(f"{row['encoder']:<34} {show(row['linear'], 'balanced_accuracy'):>22} {show(row['linear'], 'auroc'):>22} "
              f"{show(row['knn'], 'balanced_accuracy'):>22} {show(row['knn'], 'auroc'):>22}")
    print("accuracy: " + ", ".join(f"{r['encoder']} linear {r['linear']['accuracy']['value']:.3f} / "
                                   f"kNN {r['knn']['accuracy']['value']:.3f}" for r in rows))
    timings["total"] = time.perf_counter() - start
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))


if __name__ == "__main__":
    main()
