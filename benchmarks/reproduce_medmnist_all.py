#!/usr/bin/env python
"""GPU measurement of `cli.py reproduce medmnist-v2 --all`: every MedMNIST v2 2D set, wall time per set.

    python benchmarks/reproduce_medmnist_all.py --device cuda --breastmnist .devdata/medmnist/breastmnist.npz \\
        --out "$OUT/fidelity"                                   # ~4 minutes on an H200
    python benchmarks/reproduce_medmnist_all.py --device cpu --tiny-only --tiny-epochs 1 --sizes 28 \\
        --out /tmp/fid                                          # CPU smoke run of the orchestration

Two invocations of the real command, each timed end to end (process start included):

* ``tiny``: a synthetic file in the official npz layout for each of the 12 flags
  (:mod:`datasets.medmnist_synthetic`: each flag's channels, classes and label layout, (N, 14) for
  ChestMNIST), ``--tiny-epochs`` epochs, one seed, every ``--sizes`` and ``--archs``. It measures
  the orchestration and each set's code path (multi-label included) on the GPU; its AUC/ACC are
  those of synthetic data and say nothing about fidelity.
* ``real``: the BreastMNIST file given by ``--breastmnist`` under the paper's protocol
  (``--real-epochs`` 100, ``--seeds`` 3), every ``--sizes`` and ``--archs``: the fidelity numbers.

Outputs in ``--out``: ``tiny.md/.csv`` and ``real.md/.csv`` (the fidelity reports the command
writes), ``summary.md`` (wall seconds per set and per invocation, train images/s per run).
The protocol trains in fp32 (as the paper); no autocast.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.medmnist_info import MEDMNIST_2D  # noqa: E402
from datasets.medmnist_synthetic import write_medmnist_npz  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def reproduce_all(root: Path, report: Path, results: Path, device: str, seeds: int, epochs: int, archs: list[str],
                  sizes: list[str]) -> tuple[float, int]:
    """Run the command once; (wall seconds, exit code). Its output streams to this process's stderr."""
    command = [sys.executable, str(REPO / "cli.py"), "reproduce", "medmnist-v2", "--all", "--root", str(root),
               "--seeds", str(seeds), "--epochs", str(epochs), "--device", device, "--results", str(results),
               "--report", str(report), "--overwrite"]
    for arch in archs:
        command += ["--arch", arch]
    for size in sizes:
        command += ["--size", size]
    print("$", " ".join(command), file=sys.stderr, flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start, done.returncode


def per_set(report_csv: Path, label: str) -> pd.DataFrame:
    """Wall seconds and images/s per (set, model) from a fidelity report's CSV (one row per run)."""
    frame = pd.read_csv(report_csv).dropna(subset=["record"]).drop_duplicates(subset=["record"])
    if frame.empty:
        return frame
    frame["train_images_per_second"] = [_images_per_second(Path(p)) for p in frame["record"]]
    frame["model"] = [f"{a}-{s}" for a, s in zip(frame["arch"], frame["size"])]
    frame["invocation"] = label
    return frame[["invocation", "dataset", "model", "seeds", "epochs", "wall_seconds", "train_images_per_second"]]


def _images_per_second(record: Path) -> float:
    import json
    try:
        return float(json.loads(record.read_text())["provenance"].get("cost_train_images_per_second", float("nan")))
    except (OSError, ValueError, KeyError):
        return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("/tmp/medtransfer-fidelity"))
    parser.add_argument("--breastmnist", type=Path, default=None, help="Real BreastMNIST npz (the 'real' run).")
    parser.add_argument("--archs", nargs="+", default=["resnet18"], choices=["resnet18", "resnet50"])
    parser.add_argument("--sizes", nargs="+", default=["28", "224"], choices=["28", "224"])
    parser.add_argument("--seeds", type=int, default=3, help="Seeds of the real run.")
    parser.add_argument("--real-epochs", type=int, default=100)
    parser.add_argument("--tiny-epochs", type=int, default=3)
    parser.add_argument("--tiny-sizes", type=int, nargs=3, default=[256, 64, 64], help="Train/val/test images per set.")
    parser.add_argument("--tiny-only", action="store_true")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results"
    tiny_root = out / "tiny-data"
    shutil.rmtree(tiny_root, ignore_errors=True)
    for flag in MEDMNIST_2D:
        write_medmnist_npz(tiny_root, flag, tuple(args.tiny_sizes), seed=1)
    invocations = [("tiny", tiny_root, 1, args.tiny_epochs)]
    if not args.tiny_only:
        if args.breastmnist is None or not args.breastmnist.is_file():
            parser.error("--breastmnist PATH (the real file) is needed unless --tiny-only")
        real_root = out / "real-data"
        real_root.mkdir(exist_ok=True)
        target = real_root / "breastmnist.npz"
        if not target.exists():
            os.symlink(args.breastmnist.resolve(), target)
        invocations.append(("real", real_root, args.seeds, args.real_epochs))
    frames, lines, failed = [], [], False
    for label, root, seeds, epochs in invocations:
        wall, code = reproduce_all(root, out / f"{label}.md", results / label, args.device, seeds, epochs, args.archs,
                                   args.sizes)
        failed |= code != 0
        lines.append(f"- `{label}`: {wall:.1f} s wall for the whole command (exit {code}); report {label}.md")
        if (out / f"{label}.csv").is_file():
            frames.append(per_set(out / f"{label}.csv", label))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    import torch
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") and torch.cuda.is_available() else args.device
    summary = [f"# reproduce medmnist-v2 --all on {device_name}", "", *lines, "",
               table.to_markdown(index=False, floatfmt=".1f") if not table.empty else "(no runs)", ""]
    (out / "summary.md").write_text("\n".join(summary))
    print("\n".join(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
