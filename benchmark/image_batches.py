"""Dataset rows -> uint8 image batches at an encoder's geometry, as fast as the device allows.

One contract for every source: uint8 [B, 3, S, S] after resize + centre crop and before any colour
change (``Preprocessing.crop_uint8``), on the device that runs the network, in row order.
``Preprocessing.input_from_uint8`` then makes the network input. Sources, per image:

* ``cache``: the decoded-image cache (:mod:`benchmark.decoded_cache`), a memory map written by an
  earlier pass with the same dataset, geometry and decoder;
* ``nvjpeg``: files read by threads, decoded in batches by nvjpeg on the GPU
  (``torchvision.io.decode_jpeg(device="cuda")``), resized and cropped on the GPU by the same
  ``Preprocessing.geometry`` code on tensors (torchvision's antialiased resize); only JPEGs that
  :func:`benchmark.jpeg.gpu_decodable` accepts and only for datasets whose images are their files
  (``FileImageDataset`` without a custom loader);
* ``pil``: ``dataset.load_image`` + ``Preprocessing.crop_uint8`` in a thread pool (PIL releases the
  GIL while decoding and resampling): every other image (PNG, 16-bit, arrays, odd JPEGs) and every
  image on the CPU. Its pixels are exactly the reference CPU pipeline's.

A background thread prepares batch k+1 (reads, decodes, host->device copies on a side CUDA stream)
while the caller runs the network on batch k; errors (an unreadable image) are raised in the
caller's thread with the file name.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from benchmark import distributed
from benchmark.atomic import atomic_target
from benchmark.decoded_cache import create_decoded, decoded_key, decoded_path, open_decoded
from benchmark.jpeg import JpegInfo, gpu_decodable
from datasets.base import FileImageDataset, ImageDataset, UnreadableImageError
from pretrained.preprocessing import Preprocessing

log = logging.getLogger(__name__)

DECODE_CHOICES = ("auto", "pil", "nvjpeg")
PREFETCH_BATCHES = 2
MAX_DECODE_PIXELS = 256 << 20  # pixels per nvjpeg call (uint8 RGB: 768 MiB of device memory)
MAX_RESIZE_PIXELS = 96 << 20  # source pixels per resize call (float32 RGB: 1.1 GiB)


def nvjpeg_available() -> bool:
    return torch.cuda.is_available() and hasattr(torch.ops.image, "decode_jpegs_cuda")


def resolve_decode(choice: str, device: torch.device) -> str:
    """"auto" -> "nvjpeg" on CUDA (when torchvision has it), else "pil"; "nvjpeg" off CUDA is an error."""
    if choice not in DECODE_CHOICES:
        raise ValueError(f"decode must be one of {DECODE_CHOICES}, got {choice!r}")
    if choice == "auto":
        return "nvjpeg" if device.type == "cuda" and nvjpeg_available() else "pil"
    if choice == "nvjpeg" and device.type != "cuda":
        raise ValueError("--decode nvjpeg decodes on the GPU and needs --device cuda; use --decode pil on the CPU")
    if choice == "nvjpeg" and not nvjpeg_available():
        raise ValueError("--decode nvjpeg: this torchvision build has no nvJPEG support; use --decode pil")
    return choice


def takes_files_as_images(dataset: ImageDataset) -> bool:
    """True when ``load_image(i)`` is exactly ``read_image(path(i))`` (no custom loader), so the
    file bytes may be decoded elsewhere."""
    kind = type(dataset)
    return (isinstance(dataset, FileImageDataset) and kind._load is FileImageDataset._load
            and kind.load_image is ImageDataset.load_image)


class ImageBatches:
    """Iterable of ``(start, pixels)``: uint8 [B, 3, S, S] on ``device`` for ``rows[start:start + B]``.

    Args:
        rows: dataset row indices, in the order wanted.
        decode: "pil" or "nvjpeg" (see :func:`resolve_decode`); "nvjpeg" on a CPU device runs the
            same tensor pipeline with torchvision's CPU decoder (tests).
        workers: threads reading and PIL-decoding files; 0 does everything in the caller's thread.
        cache_dir: where the decoded-image cache lives (None: no cache). It is read when it
            exists; it is written when ``rows`` are all the dataset's rows and this is the only
            process (under torchrun the ranks read a cache but do not write one).
    After iterating, ``stats`` counts the images per source and ``cache_state`` says what the
    cache did ("off", "hit", "written", "miss").
    """

    def __init__(self, dataset: ImageDataset, rows: np.ndarray, preprocessing: Preprocessing, *,
                 device: torch.device, batch_size: int, workers: int, decode: str = "pil",
                 cache_dir: Path | None = None):
        self.dataset, self.rows, self.preprocessing = dataset, np.asarray(rows, dtype=np.int64), preprocessing
        self.device, self.batch_size, self.workers, self.decode = device, int(batch_size), int(workers), decode
        self.cache_dir = cache_dir
        self.size = preprocessing.input_size
        self.stats: Counter = Counter()
        self.cache_state = "off"
        self._tensor_decode = decode == "nvjpeg" and takes_files_as_images(dataset) and (
            preprocessing.interpolation in ("bicubic", "bilinear"))
        self._max_pixels = Image.MAX_IMAGE_PIXELS

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    # -- iteration --------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        key = decoded_key(self.dataset, self.preprocessing, self.decode) if self.cache_dir is not None else None
        path = decoded_path(self.cache_dir, key) if key is not None else None
        cached = open_decoded(path, key) if path is not None else None
        if cached is not None:
            self.cache_state = "hit"
            yield from self._run(cached, None)
            return
        full = len(self.rows) == len(self.dataset) and np.array_equal(self.rows, np.arange(len(self.dataset)))
        if path is None or not full or distributed.world_size() > 1:
            self.cache_state = "off" if path is None else "miss"
            yield from self._run(None, None)
            return
        with atomic_target(path) as tmp:
            target = create_decoded(tmp, key)
            yield from self._run(None, target)
            target.flush()
            del target
            self.cache_state = "written"

    def _run(self, cached: np.memmap | None, target: np.memmap | None) -> Iterator[tuple[int, torch.Tensor]]:
        starts = list(range(0, len(self.rows), self.batch_size))
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="images") if self.workers > 0 else None
        side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        writer = _CacheWriter(target) if target is not None else None
        try:
            def make(start: int):
                return self._batch(start, cached, pool, side, writer)
            if pool is None:
                batches = (make(start) for start in starts)
            else:
                batches = _prefetch(make, starts, PREFETCH_BATCHES)
            for start, (pixels, ready) in zip(starts, batches):
                if ready is not None:
                    torch.cuda.current_stream(self.device).wait_event(ready)
                    pixels.record_stream(torch.cuda.current_stream(self.device))
                yield start, pixels
            if writer is not None:
                writer.finish()
        finally:
            if writer is not None:
                writer.close()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    # -- one batch (runs in the prefetch thread) ------------------------------------------------
    def _batch(self, start: int, cached, pool, side, writer) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        rows = self.rows[start:start + self.batch_size]
        stream = torch.cuda.stream(side) if side is not None else nullcontext()
        with stream:
            if cached is not None:
                pixels = self._from_cache(cached, rows)
                self.stats["cache"] += len(rows)
            elif self._tensor_decode:
                pixels = self._decode_tensors(rows, pool)
            else:
                pixels = self._to_device(self._pil(rows, pool))
            if writer is not None:
                writer.put(start, pixels)
            ready = None
            if side is not None:
                ready = torch.cuda.Event()
                ready.record(side)
        return pixels, ready

    def _from_cache(self, cached: np.memmap, rows: np.ndarray) -> torch.Tensor:
        contiguous = len(rows) > 0 and rows[-1] - rows[0] == len(rows) - 1 and bool(np.all(np.diff(rows) == 1))
        source = cached[rows[0]:rows[-1] + 1] if contiguous else cached[rows]
        host = torch.empty((len(rows), 3, self.size, self.size), dtype=torch.uint8,
                           pin_memory=self.device.type == "cuda")
        np.copyto(host.numpy(), source)
        return host.to(self.device, non_blocking=True) if self.device.type == "cuda" else host

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return host
        return host.pin_memory().to(self.device, non_blocking=True)

    def _pil(self, rows: np.ndarray, pool) -> torch.Tensor:
        """PIL pixels [len(rows), 3, S, S] on the CPU; an unreadable image raises (first one named)."""
        results = list(pool.map(self._pil_one, rows)) if pool is not None and len(rows) > 1 else [
            self._pil_one(row) for row in rows]
        errors = [r for r in results if isinstance(r, str)]
        if errors:
            more = f" ({len(errors) - 1} more unreadable in this batch)" if len(errors) > 1 else ""
            raise UnreadableImageError(errors[0] + more)
        self.stats["pil"] += len(rows)
        if not results:
            return torch.empty((0, 3, self.size, self.size), dtype=torch.uint8)
        return torch.stack(results)

    def _pil_one(self, row) -> torch.Tensor | str:
        try:
            return self.preprocessing.crop_uint8(self.dataset.load_image(int(row)))
        except UnreadableImageError as error:
            return str(error)

    def _decode_tensors(self, rows: np.ndarray, pool) -> torch.Tensor:
        """nvjpeg for the JPEGs it may take, PIL for the rest; uint8 [len(rows), 3, S, S] on the device."""
        paths = [self.dataset.path(int(row)) for row in rows]
        if pool is not None:  # a few chunks, not one task per file: less GIL time per image
            step = -(-len(paths) // self.workers)
            files = [data for chunk in pool.map(_read_files, [paths[i:i + step] for i in range(0, len(paths), step)])
                     for data in chunk]
        else:
            files = _read_files(paths)
        jpeg_positions, infos = [], []
        for position, data in enumerate(files):
            info = gpu_decodable(data.data, self._max_pixels) if data is not None else None
            if info is not None:
                jpeg_positions.append(position)
                infos.append(info)
        out = torch.empty((len(rows), 3, self.size, self.size), dtype=torch.uint8, device=self.device)
        decoded_positions = []
        try:
            for chunk in _chunks(jpeg_positions, infos, MAX_DECODE_PIXELS):
                images = _decode_jpegs([torch.from_numpy(files[p]) for p in chunk], self.device)
                self._geometry_into(out, chunk, images)
                decoded_positions += chunk
        except RuntimeError as error:  # nvjpeg refused a file the header check let through: PIL decides
            log.warning("GPU JPEG decoding failed for a batch (%s); decoding its images with PIL", error)
        self.stats["nvjpeg"] += len(decoded_positions)
        done = set(decoded_positions)
        rest = [p for p in range(len(rows)) if p not in done]
        if rest:
            host = self._pil(rows[rest], pool)
            out[torch.as_tensor(rest, device=self.device)] = self._to_device(host)
        return out

    def _geometry_into(self, out: torch.Tensor, positions: list[int], images: list[torch.Tensor]) -> None:
        """Resize + crop decoded images (grouped by size, batched) into ``out[positions]``."""
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(tuple(image.shape[-2:]), []).append(index)
        for (height, width), members in groups.items():
            per_call = max(1, MAX_RESIZE_PIXELS // (height * width))
            for first in range(0, len(members), per_call):
                part = members[first:first + per_call]
                batch = torch.stack([images[i] for i in part])
                pixels = self.preprocessing.geometry(batch)
                out[torch.as_tensor([positions[i] for i in part], device=out.device)] = pixels


def _read_files(paths: list[Path]) -> list[np.ndarray | None]:
    """Each file's bytes as a uint8 array (None when unreadable: the PIL path reports the error)."""
    files = []
    for path in paths:
        try:
            files.append(np.fromfile(path, dtype=np.uint8))
        except OSError:
            files.append(None)
    return files


def _chunks(positions: list[int], infos: list[JpegInfo], budget: int) -> Iterator[list[int]]:
    chunk, pixels = [], 0
    for position, info in zip(positions, infos):
        size = info.width * info.height
        if chunk and pixels + size > budget:
            yield chunk
            chunk, pixels = [], 0
        chunk.append(position)
        pixels += size
    if chunk:
        yield chunk


def _decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """uint8 RGB [3, H, W] per file, on ``device`` (nvjpeg on CUDA, libjpeg-turbo on the CPU)."""
    from torchvision.io import ImageReadMode, decode_jpeg
    if device.type == "cuda":
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return [decode_jpeg(d, mode=ImageReadMode.RGB) for d in data]


class _CacheWriter:
    """Copies finished batches into the cache's memory map from a thread of its own (off the critical path)."""

    def __init__(self, target: np.memmap):
        self.target = target
        self.jobs: queue.Queue = queue.Queue(maxsize=2 * PREFETCH_BATCHES)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="decoded-cache-writer", daemon=True)
        self.thread.start()

    def put(self, start: int, pixels: torch.Tensor) -> None:
        if self.error is not None:
            raise self.error
        if pixels.device.type == "cuda":
            host = torch.empty(pixels.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(pixels, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        else:
            host, done = pixels, None
        self.jobs.put((start, host, done))

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            start, host, done = job
            try:
                if done is not None:
                    done.synchronize()
                self.target[start:start + len(host)] = host.numpy()
            except BaseException as error:  # reported by put/finish in the producing thread
                self.error = error

    def finish(self) -> None:
        """Wait until every batch is in the memory map."""
        self.close()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self.thread.is_alive():
            self.jobs.put(None)
            self.thread.join()


def _prefetch(make, starts: list[int], depth: int) -> Iterator:
    """``make(start)`` for each start, computed ``depth`` ahead in a background thread, in order."""
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for start in starts:
                if stop.is_set():
                    return
                results.put(("ok", make(start)))
        except BaseException as error:
            results.put(("error", error))

    thread = threading.Thread(target=produce, name="image-batches", daemon=True)
    thread.start()
    try:
        for _ in starts:
            kind, value = results.get()
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                results.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()
