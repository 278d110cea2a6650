#!/usr/bin/env python
"""DataLoader worker start-up: fork (the old default) vs the fork server the harness uses (benchmark.workers).

    python benchmarks/worker_start.py --workers 1        # the 2-core CI machine's default
    python benchmarks/worker_start.py --workers 8

Seconds from creating the DataLoader to its first batch (a trivial dataset, so this is start-up
only), for a dataset object of ~0 bytes and of ``--payload-mb`` (an in-memory image array, pickled
to each worker by the fork server but shared copy-on-write by fork). The fork server's first use
also starts the server (it imports torch and the data modules once); later loaders fork from it.
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.workers import data_loader  # noqa: E402


class Payload(Dataset):
    def __init__(self, megabytes: int):
        self.array = np.zeros(megabytes << 20, dtype=np.uint8)

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(index)


def first_batch_seconds(make, dataset: Dataset, workers: int) -> float:
    start = time.perf_counter()
    loader = make(dataset, batch_size=8, num_workers=workers)
    next(iter(loader))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--payload-mb", type=int, default=76, help="76 MB: synthderm's default images")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    fork = multiprocessing.get_context("fork")

    def forked(dataset, **kwargs):
        return DataLoader(dataset, multiprocessing_context=fork, **kwargs)
    rows = []
    for label, megabytes in (("empty dataset", 0), (f"{args.payload_mb} MB dataset", args.payload_mb)):
        dataset = Payload(megabytes)
        for name, make in (("fork", forked), ("forkserver (benchmark.workers)", data_loader)):
            times = [first_batch_seconds(make, dataset, args.workers) for _ in range(args.repeats)]
            rows.append((label, name, f"{times[0]:.2f}", f"{min(times[1:] or times):.2f}"))
            print(rows[-1], flush=True)
    print(f"\n{args.workers} worker(s), torch {torch.__version__}, Python {sys.version.split()[0]}")
    print(tabulate(rows, headers=["dataset", "start method", "first loader (s)", "later loaders (s)"],
                   tablefmt="github"))


if __name__ == "__main__":
    main()
