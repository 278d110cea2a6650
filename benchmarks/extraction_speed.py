#!/usr/bin/env python
"""Feature-extraction speed from JPEG files: ours next to the physical limit and the seed-style pipeline.

    python benchmarks/extraction_speed.py --device cuda --root /data/ham10000                 # HAM10000 as stored
    python benchmarks/extraction_speed.py --device cuda --make-jpegs 10000 --originals DIR   # 600x450 JPEGs made from DIR
    python benchmarks/extraction_speed.py --device cpu --arch resnet18 --make-jpegs 64 --originals DIR \\
        --batch-size 16 --seed-images 32 --check 8 --forward-batches 2 --no-compile       # smoke test on a CPU

``--root`` is a folder with ``images/`` and ``HAM10000_metadata.csv``; ``--make-jpegs N`` writes N
JPEGs at the originals' size (flips and small shifts of the ``--originals``, quality 90-95) and
measures them too. One run, one machine, every row measured in this process:

* ``forward``: the encoder alone on a device-resident batch, bf16 autocast + channels_last (the
  physical limit of extraction), and the same through ``torch.compile``;
* ``nvjpeg decode``: ``torchvision.io.decode_jpeg(device="cuda")`` on file bytes already in memory,
  alone and with our resize + centre crop on the GPU;
* ``ours``: :func:`benchmark.features.extract_features` end to end from the files: ``cold`` (nvjpeg
  decode; with no cache folder, and with the decoded-image cache written), ``warm`` (a second
  extraction with the same geometry reads uint8 from the decoded-image cache), ``warm + compile``,
  ``cold + compile``, and ``PIL`` (``--decode pil``, the CPU path and the fallback for files nvjpeg
  does not take; the fork server for its workers is started first, so its one-time start is not counted);
* ``seed-style``: ANTON's linear.py pipeline: a PIL DataLoader (Resize(224, bicubic), CenterCrop,
  ToTensor, Normalize) with the same workers, batch 64, fp32 forward, on ``--seed-images`` images.

``--check N`` compares features of the first N images per image: nvjpeg vs PIL decoding (same device
and precision) and the GPU path vs the CPU fp32 reference; raw cosine (the stated criterion,
>= 0.999) and cosine after removing the mean feature (random-init features share a large common
component, so the centred figure is the stricter one). The table comes last.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tabulate import tabulate
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.device import autocast_dtype  # noqa: E402
from benchmark.features import compiled_encoder, extract_features  # noqa: E402
from benchmark.image_batches import ImageBatches, nvjpeg_available, resolve_decode, wait_for_decoded_writes  # noqa: E402
from benchmark.workers import start_worker_server  # noqa: E402
from datasets.base import FileImageDataset, ImageDataset  # noqa: E402
from pretrained.encoder import Encoder, LoadOptions  # noqa: E402
from pretrained.torchvision_zoo import random_encoder  # noqa: E402


# -- data -----------------------------------------------------------------------------------------
def _variant(job: tuple[str, str, int]) -> None:
    source, target, seed = job
    rng = np.random.default_rng(seed)
    with Image.open(source) as image:
        image = image.convert("RGB")
    width, height = image.size
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    dx, dy = (int(v) for v in rng.integers(0, 24, size=2))  # a small shift, back to the full size
    image = image.crop((dx, dy, width - 24 + dx, height - 24 + dy)).resize((width, height), Image.Resampling.BICUBIC)
    image.save(target, quality=int(rng.integers(90, 96)))


def make_jpegs(originals: Path, folder: Path, n: int, workers: int) -> FileImageDataset:
    sources = sorted(p for p in originals.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not sources:
        raise SystemExit(f"no JPEGs in {originals}")
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(sources[i % len(sources)]), str(folder / f"img_{i:06d}.jpg"), i) for i in range(n)]
    with ProcessPoolExecutor(max(1, workers)) as pool:
        list(pool.map(_variant, jobs, chunksize=64))
    return files_dataset("generated", [job[1] for job in jobs])


def files_dataset(name: str, paths: list[str]) -> FileImageDataset:
    table = pd.DataFrame({"image_id": [Path(p).stem for p in paths], "path": paths,
                          "label": np.arange(len(paths)) % 2, "group": [Path(p).stem for p in paths]})
    return FileImageDataset(name, table, ["a", "b"], root=Path(paths[0]).parent)


def ham10000(root: Path, limit: int | None) -> ImageDataset:
    from datasets.registry import DATASETS
    dataset = DATASETS.get("ham10000").build(root, {})
    if limit:
        paths = [str(dataset.path(i)) for i in range(min(limit, len(dataset)))]
        return files_dataset("ham10000-subset", paths)
    return dataset


# -- measurements -----------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def forward_rate(network, device: torch.device, batch: int, size: int, batches: int) -> float:
    """Images/s of the network alone on one device-resident batch (bf16 + channels_last on CUDA)."""
    x = torch.randn(batch, 3, size, size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = autocast_dtype(device)
    for _ in range(3):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            network(x)
    sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            network(x)
    sync(device)
    return batches * batch / (time.perf_counter() - start)


def decode_rates(dataset: FileImageDataset, encoder: Encoder, device: torch.device, batch: int,
                 n: int) -> tuple[float, float]:
    """(decode-only, decode + resize/crop) images/s of nvjpeg on in-memory file bytes."""
    from torchvision.io import ImageReadMode, decode_jpeg
    data = [torch.from_numpy(np.fromfile(dataset.path(i), dtype=np.uint8)) for i in range(min(n, len(dataset)))]
    groups = [data[i:i + batch] for i in range(0, len(data), batch)]
    decode_jpeg(groups[0], mode=ImageReadMode.RGB, device=device)  # warm-up (nvjpeg handle)
    results = []
    for geometry in (False, True):
        sync(device)
        start = time.perf_counter()
        for group in groups:
            images = decode_jpeg(group, mode=ImageReadMode.RGB, device=device)
            if geometry:
                shapes = {tuple(i.shape) for i in images}
                if len(shapes) == 1:
                    encoder.preprocessing.geometry(torch.stack(images))
                else:
                    for image in images:
                        encoder.preprocessing.geometry(image)
        sync(device)
        results.append(len(data) / (time.perf_counter() - start))
    return results[0], results[1]


def data_path_rate(dataset: ImageDataset, encoder: Encoder, device: torch.device, batch: int, workers: int) -> float:
    """Images/s of :class:`ImageBatches` alone (files read, decoded and resized on the device; no forward)."""
    batches = ImageBatches(dataset, np.arange(len(dataset)), encoder.preprocessing, device=device,
                           batch_size=batch, workers=workers, decode=resolve_decode("auto", device), cache_dir=None)
    sync(device)
    start = time.perf_counter()
    for _, pixels in batches:
        pixels.float().mean()  # touch the batch on the consuming stream, as the forward would
    sync(device)
    return len(dataset) / (time.perf_counter() - start)


def ours(encoder: Encoder, dataset: ImageDataset, device: torch.device, cache: Path, *, batch: int, workers: int,
         decode: str, compile: bool) -> dict:
    shutil.rmtree(cache / "features", ignore_errors=True)  # always extract (the decoded-image cache may stay)
    features = extract_features(encoder, dataset, device=device, batch_size=batch, num_workers=workers,
                                cache_dir=cache, decode=decode, compile=compile)
    meta = {**features.meta, "x": features.x}
    if meta.get("decoded_cache") == "written":  # written in the background: how much longer until it is on disk
        start = time.perf_counter()
        wait_for_decoded_writes()
        meta["cache_durable_after"] = time.perf_counter() - start
    return meta


class _SeedStyle(Dataset):
    """ANTON linear.py's test-time pipeline, per image in DataLoader workers."""

    def __init__(self, paths: list[str]):
        self.paths = paths
        self.transform = transforms.Compose([
            transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(224),
            transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB"))


@torch.inference_mode()
def seed_style_rate(encoder: Encoder, paths: list[str], device: torch.device, workers: int) -> float:
    model = encoder.eval().to(device, memory_format=torch.contiguous_format)
    loader = DataLoader(_SeedStyle(paths), batch_size=64, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    start = time.perf_counter()
    for images in loader:
        model(images.to(device)).cpu()
    sync(device)
    return len(paths) / (time.perf_counter() - start)


def cosines(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(min raw cosine, mean raw cosine, min cosine after removing b's mean feature) over rows."""
    def rowwise(u, v):
        return (u * v).sum(1) / np.maximum(np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1), 1e-12)
    raw = rowwise(a, b)
    centre = b.mean(0, keepdims=True)
    return float(raw.min()), float(raw.mean()), float(rowwise(a - centre, b - centre).min())


# -- one dataset ------------------------------------------------------------------------------------
class Table:
    """Rows (data, pipeline, images/s, notes), each printed as soon as it is measured."""

    def __init__(self):
        self.rows: list[tuple[str, str, float, str]] = []

    def add(self, data: str, what: str, rate: float, note: str = "") -> None:
        self.rows.append((data, what, rate, note))
        print(f"  {data}: {what}: {rate:,.0f} images/s {note}", flush=True)


def measure(label: str, dataset: ImageDataset, encoder: Encoder, args, device, table: Table, checks: list,
            cache: Path) -> None:
    """Every uncompiled row for one dataset; leaves the decoded-image cache in ``cache`` for the compiled row."""
    n = len(dataset)
    print(f"[{label}] {n} images at {_image_size(dataset)}, {encoder.preprocessing.input_size} px network input",
          flush=True)
    if device.type == "cuda" and nvjpeg_available():
        decode_only, decode_geometry = decode_rates(dataset, encoder, device, args.batch_size, min(n, 4096))
        table.add(label, "nvjpeg decode only (bytes in memory)", decode_only)
        table.add(label, "nvjpeg decode + resize/crop on GPU", decode_geometry)
    if args.pil:
        pil = ours(encoder, dataset, device, cache, batch=args.batch_size, workers=args.workers, decode="pil",
                   compile=False)
        table.add(label, f"ours cold, PIL in {args.workers} workers", pil["images_per_second"], _sources(pil))
        shutil.rmtree(cache / "decoded", ignore_errors=True)
    if device.type == "cuda":  # the decode pipeline alone: no decoded-image cache to write
        bare = extract_features(encoder, dataset, device=device, batch_size=args.batch_size,
                                num_workers=args.workers, cache_dir=None)
        table.add(label, f"ours cold ({bare.meta['decode']}, no cache dir)", bare.meta["images_per_second"],
                  _sources(bare.meta))
        # our data path with no network, after the rows above paid the one-time nvjpeg/thread start:
        # where a cold extraction's time goes (compare with the forward-only row)
        table.add(label, "ours data path alone (read + nvjpeg + resize, no forward)",
                  data_path_rate(dataset, encoder, device, args.batch_size, args.workers))
    cold = ours(encoder, dataset, device, cache, batch=args.batch_size, workers=args.workers, decode="auto",
                compile=False)
    table.add(label, f"ours cold ({cold['decode']}, decoded cache written)", cold["images_per_second"], _sources(cold))
    warm = ours(encoder, dataset, device, cache, batch=args.batch_size, workers=args.workers, decode="auto",
                compile=False)
    table.add(label, "ours warm (uint8 from the decoded cache)", warm["images_per_second"], _sources(warm))
    k = min(args.check, n)
    if k and args.pil:
        checks.append((label, f"{cold['decode']} vs PIL decode ({cold['precision']}, {k} images)",
                       *cosines(cold["x"][:k], pil["x"][:k])))
    if k and device.type == "cuda":
        reference_encoder = random_encoder(args.arch, args.arch, LoadOptions())  # same seed: same weights
        reference = extract_features(reference_encoder, dataset, np.arange(k), device=torch.device("cpu"),
                                     batch_size=64, num_workers=args.workers, cache_dir=None)
        checks.append((label, f"GPU cold vs CPU fp32 PIL reference ({k} images)", *cosines(cold["x"][:k], reference.x)))
        print(f"  {label}: {checks[-1]}", flush=True)
    seed_paths = [str(dataset.path(i)) for i in range(min(args.seed_images, n))]
    seed = seed_style_rate(encoder, seed_paths, device, args.workers)
    encoder.to(memory_format=torch.channels_last)
    table.add(label, f"seed-style PIL DataLoader, fp32, batch 64 ({len(seed_paths)} images)", seed)


def _sources(meta: dict) -> str:
    sources = ", ".join(f"{k} {v}" for k, v in sorted(meta.get("images_by_source", {}).items()))
    extra = f"; compile {meta['compile_seconds']:.0f} s" if "compile_seconds" in meta else ""
    if "cache_durable_after" in meta:
        extra += f"; cache file complete {meta['cache_durable_after']:.2f} s after the features"
    return f"{meta['seconds']:.2f} s; {sources}{extra}"


def _image_size(dataset: ImageDataset) -> str:
    with Image.open(dataset.path(0)) as image:
        return f"{image.size[0]}x{image.size[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--root", type=Path, default=None, help="HAM10000 folder (images/ + HAM10000_metadata.csv)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N HAM10000 images")
    parser.add_argument("--make-jpegs", type=int, default=0, help="also measure N generated JPEGs")
    parser.add_argument("--originals", type=Path, default=None, help="JPEGs to make --make-jpegs from")
    parser.add_argument("--jpeg-dir", type=Path, default=None, help="where to write them (default: a temp folder)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=max(1, min(16, (os.cpu_count() or 2) - 1)))
    parser.add_argument("--seed-images", type=int, default=2048)
    parser.add_argument("--check", type=int, default=512, help="images compared GPU vs CPU (0 = no check)")
    parser.add_argument("--forward-batches", type=int, default=40)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--no-pil", dest="pil", action="store_false", help="skip the --decode pil row")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.root is None and not args.make_jpegs:
        parser.error("give --root and/or --make-jpegs")
    encoder = random_encoder(args.arch, args.arch, LoadOptions()).eval().to(device)
    if device.type == "cuda":
        encoder.to(memory_format=torch.channels_last)
    size = encoder.preprocessing.input_size
    table, checks = Table(), []
    start_worker_server()  # the PIL rows measure decoding, not the fork server's one-time start (~10 s there)
    limit = forward_rate(encoder, device, args.batch_size, size, args.forward_batches)
    table.add("-", f"forward only, {'bf16 + channels_last' if device.type == 'cuda' else 'fp32'}", limit)
    table.add("-", "forward only, batch 64", forward_rate(encoder, device, 64, size, args.forward_batches))
    datasets = []
    if args.root is not None:
        datasets.append(("HAM10000", ham10000(args.root, args.limit)))
    if args.make_jpegs:
        if args.originals is None:
            parser.error("--make-jpegs needs --originals")
        folder = args.jpeg_dir or Path(tempfile.mkdtemp(prefix="jpegs-"))
        start = time.perf_counter()
        generated = make_jpegs(args.originals, folder, args.make_jpegs, args.workers)
        print(f"made {args.make_jpegs} JPEGs in {folder} ({time.perf_counter() - start:.1f} s)", flush=True)
        datasets.append(("generated", generated))
    caches = {label: Path(tempfile.mkdtemp(prefix="extraction-speed-")) for label, _ in datasets}
    try:
        for label, dataset in datasets:
            measure(label, dataset, encoder, args, device, table, checks, caches[label])
        if args.compile:  # last: compiling takes a minute
            start = time.perf_counter()
            with torch.inference_mode():
                compiled = compiled_encoder(encoder)
                forward_rate(compiled, device, args.batch_size, size, 1)
            table.add("-", "forward only, compiled", forward_rate(compiled, device, args.batch_size, size,
                                                                  args.forward_batches),
                      f"compile {time.perf_counter() - start:.0f} s")
            for label, dataset in datasets:
                warm = ours(encoder, dataset, device, caches[label], batch=args.batch_size, workers=args.workers,
                            decode="auto", compile=True)
                table.add(label, "ours warm + compile", warm["images_per_second"], _sources(warm))
                cold = extract_features(encoder, dataset, device=device, batch_size=args.batch_size,
                                        num_workers=args.workers, cache_dir=None, compile=True)
                table.add(label, f"ours cold + compile ({cold.meta['decode']}, no cache dir)",
                          cold.meta["images_per_second"], _sources(cold.meta))
    finally:
        for cache in caches.values():
            shutil.rmtree(cache, ignore_errors=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n{args.arch} at {size} px, batch {args.batch_size}, {args.workers} threads/workers, device {name}, "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__}")
    if checks:
        print(tabulate([(d, what, f"{lo:.5f}", f"{mean:.5f}", f"{centred:.4f}") for d, what, lo, mean, centred in checks],
                       headers=["data", "features compared", "min cosine", "mean cosine", "min centred cosine"],
                       tablefmt="github"))
        print()
    rows = []
    for data, what, rate, note in table.rows:
        seed = next((r for d, w, r, _ in table.rows if d == data and w.startswith("seed-style")), None)
        ratio = f"{rate / seed:.1f}x" if seed and data != "-" else ""
        share = f"{100 * rate / limit:.0f} %" if data != "-" or what.endswith("compiled") else ""
        rows.append((data, what, f"{rate:,.0f}", share, ratio, note))
    print(tabulate(rows, headers=["data", "pipeline", "images/s", "of forward limit", "vs seed-style", "notes"],
                   tablefmt="github"))


if __name__ == "__main__":
    main()
