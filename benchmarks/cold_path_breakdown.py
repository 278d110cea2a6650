#!/usr/bin/env python
"""Where a cold extraction from JPEG files spends its time (the nvjpeg path of ImageBatches).

    python benchmarks/cold_path_breakdown.py --device cuda --root /data/ham10000 --workers 15

Every row is measured in this process, after a warm-up pass that pays the one-time starts (CUDA
context, nvjpeg handle, cuDNN autotuning, thread pools), over every image of ``--root``:

* file reads alone (``--threads`` reader threads, bytes only), then reads + the JPEG header sniff;
* the sniff alone (bytes in memory, one thread);
* our data path alone (read + sniff + nvjpeg + resize/crop, no forward), from the files and with
  the file bytes served from memory (what the file system costs);
* our cold extraction end to end (:func:`benchmark.features.extract_features`, no cache folder),
  from the files and from memory, with its timeline: time to the first batch, the steady interval
  between batches, and where the batch thread's time went (waiting for reads, nvjpeg, resize);
* the same from the files with ``--readers`` reader threads (``image_batches.READER_THREADS``),
  ``--repeats`` times each (runs of ~1 s vary by ~10 %).

The forward-only rate (bf16 + channels_last) is the limit. The table comes last.
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import benchmark.image_batches as image_batches  # noqa: E402
from benchmark.features import extract_features  # noqa: E402
from benchmark.jpeg import gpu_decodable  # noqa: E402
from benchmarks.extraction_speed import data_path_rate, forward_rate, ham10000, sync  # noqa: E402
from pretrained.encoder import LoadOptions  # noqa: E402
from pretrained.torchvision_zoo import random_encoder  # noqa: E402


class Timeline:
    """Timestamps of batches handed to the consumer and seconds per stage in the batch thread."""

    def __init__(self):
        self.yields: list[float] = []
        self.stages: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds


@contextmanager
def instrumented(timeline: Timeline, memory: dict[str, bytearray] | None = None):
    """Patch ImageBatches to record ``timeline`` (and serve file bytes from ``memory`` when given)."""
    cls = image_batches.ImageBatches
    originals = {name: getattr(cls, name) for name in ("_batch", "_decode_tensors", "_geometry_into", "_run")}
    read_file = image_batches._read_file

    def timed(name, stage):
        def wrapper(self, *args, **kwargs):
            tick = time.perf_counter()
            try:
                return originals[name](self, *args, **kwargs)
            finally:
                timeline.add(stage, time.perf_counter() - tick)
        return wrapper

    def run(self, *args, **kwargs):
        for item in originals["_run"](self, *args, **kwargs):
            timeline.yields.append(time.perf_counter())
            yield item

    cls._batch, cls._decode_tensors = timed("_batch", "batch total"), timed("_decode_tensors", "nvjpeg + resize")
    cls._geometry_into, cls._run = timed("_geometry_into", "resize/crop"), run
    if memory is not None:
        image_batches._read_file = lambda path: bytearray(memory[str(path)])
    try:
        yield timeline
    finally:
        for name, function in originals.items():
            setattr(cls, name, function)
        image_batches._read_file = read_file


def rate_of(n: int, function) -> tuple[float, float]:
    start = time.perf_counter()
    function()
    seconds = time.perf_counter() - start
    return n / seconds, seconds


def reads(paths: list[Path], threads: int, sniff: bool) -> None:
    def chunk(part):
        for path in part:
            data = image_batches._read_file(path)
            if sniff and data is not None:
                gpu_decodable(data, None)
    step = -(-len(paths) // (threads * 8))
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(chunk, [paths[i:i + step] for i in range(0, len(paths), step)]))


def describe(timeline: Timeline, start: float, n_batches: int) -> str:
    if not timeline.yields:
        return ""
    first = timeline.yields[0] - start
    gaps = np.diff(timeline.yields)
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in timeline.stages.items())
    waits = timeline.stages.get("batch total", 0.0) - timeline.stages.get("nvjpeg + resize", 0.0)
    return (f"first batch {first * 1e3:.0f} ms, median gap {np.median(gaps) * 1e3:.1f} ms over {n_batches} batches; "
            f"{stages}; waiting for reads ~{waits:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--root", type=Path, required=True, help="HAM10000 folder")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=15)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4, 8, 15, 32])
    parser.add_argument("--readers", type=int, nargs="*", default=[1, 2, 4, 15],
                        help="reader-thread counts tried for the cold extraction")
    parser.add_argument("--repeats", type=int, default=2, help="runs per reader-thread count")
    parser.add_argument("--limit", type=int, default=None, help="the first N images only (smoke tests)")
    parser.add_argument("--forward-batches", type=int, default=40)
    args = parser.parse_args()
    device = torch.device(args.device)
    dataset = ham10000(args.root, args.limit)
    n = len(dataset)
    paths = [dataset.path(i) for i in range(n)]
    encoder = random_encoder(args.arch, args.arch, LoadOptions()).eval().to(device)
    if device.type == "cuda":
        encoder.to(memory_format=torch.channels_last)
    rows: list[tuple[str, float, float, str]] = []
    limit = forward_rate(encoder, device, args.batch_size, encoder.preprocessing.input_size, args.forward_batches)
    rows.append(("forward only, bf16 + channels_last (the limit)", limit, n / limit, ""))
    extract = lambda: extract_features(encoder, dataset, device=device, batch_size=args.batch_size,  # noqa: E731
                                       num_workers=args.workers, cache_dir=None)
    extract()  # warm-up: one-time starts
    for threads in args.threads:
        rate, seconds = rate_of(n, lambda: reads(paths, threads, sniff=False))
        rows.append((f"file reads alone, {threads} threads", rate, seconds, ""))
    rate, seconds = rate_of(n, lambda: reads(paths, args.workers, sniff=True))
    rows.append((f"file reads + header sniff, {args.workers} threads", rate, seconds, ""))
    memory = {str(p): image_batches._read_file(p) for p in paths}
    rate, seconds = rate_of(n, lambda: [gpu_decodable(memory[str(p)], None) for p in paths])
    rows.append(("header sniff alone, 1 thread (bytes in memory)", rate, seconds, ""))
    n_batches = -(-n // args.batch_size)
    for label, source in (("files", None), ("bytes in memory", memory)):
        for what, function in (("data path alone (no forward)",
                                lambda: data_path_rate(dataset, encoder, device, args.batch_size, args.workers)),
                               ("cold extraction end to end", extract)):
            with instrumented(Timeline(), source) as timeline:
                sync(device)
                start = time.perf_counter()
                rate, seconds = rate_of(n, function)
            rows.append((f"{what}, {label}", rate, seconds, describe(timeline, start, n_batches)))
            print(rows[-1], flush=True)
    default_readers = image_batches.READER_THREADS
    for readers in args.readers:
        for repeat in range(args.repeats):
            image_batches.READER_THREADS = readers
            with instrumented(Timeline()) as timeline:
                sync(device)
                start = time.perf_counter()
                rate, seconds = rate_of(n, extract)
            rows.append((f"cold extraction, files, {readers} reader threads (run {repeat + 1})", rate, seconds,
                         describe(timeline, start, n_batches)))
            print(rows[-1], flush=True)
    image_batches.READER_THREADS = default_readers
    print(f"\n{args.arch}, {n} images, batch {args.batch_size}, {args.workers} workers, "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}")
    print(tabulate([(what, f"{rate:,.0f}", f"{seconds:.3f}", f"{100 * rate / limit:.0f} %", note)
                    for what, rate, seconds, note in rows],
                   headers=["what", "images/s", "seconds", "of forward limit", "timeline"], tablefmt="github"))


if __name__ == "__main__":
    main()
