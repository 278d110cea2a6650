"""Dataset rows -> uint8 image batches at an encoder's geometry, as fast as the device allows.

One contract for every source: uint8 [B, 3, S, S] after resize + centre crop and before any colour
change (``Preprocessing.crop_uint8``), on the device that runs the network, in row order.
``Preprocessing.input_from_uint8`` then makes the network input. Sources, per image:

* ``cache``: the decoded-image cache (:mod:`benchmark.decoded_cache`) written by an earlier pass
  with the same dataset, geometry and decoder;
* ``nvjpeg``: files read by threads, decoded in batches by nvjpeg on the GPU
  (``torchvision.io.decode_jpeg(device="cuda")``), resized and cropped on the GPU by the same
  ``Preprocessing.geometry`` code on tensors (torchvision's antialiased resize); only JPEGs that
  :func:`benchmark.jpeg.gpu_decodable` accepts and only for datasets whose images are their files
  (``FileImageDataset`` without a custom loader);
* ``pil``: ``dataset.load_image`` + ``Preprocessing.crop_uint8``: every other image (PNG, 16-bit,
  arrays, odd JPEGs) and every image on the CPU. Its pixels are exactly the reference CPU
  pipeline's. Files are decoded in DataLoader worker processes when there are two or more workers
  (threads would share one GIL: ~860 images/s with 15 threads on the H200 host), in-memory arrays
  and single-worker runs in threads (PIL releases the GIL while decoding and resampling).

A background thread prepares batch k+1 (reads, decodes, host->device copies on a side CUDA stream)
while the caller runs the network on batch k; errors (an unreadable image) are raised in the
caller's thread with the file name.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from benchmark import distributed
from benchmark.atomic import atomic_target
from benchmark.decoded_cache import DecodedWriter, decoded_key, decoded_path, open_decoded, read_rows
from benchmark.jpeg import JpegInfo, gpu_decodable
from benchmark.workers import data_loader
from datasets.base import FileImageDataset, ImageDataset, UnreadableImageError
from pretrained.preprocessing import Preprocessing

log = logging.getLogger(__name__)

DECODE_CHOICES = ("auto", "pil", "nvjpeg")
PREFETCH_BATCHES = 2
# threads reading + sniffing the JPEG files nvjpeg decodes: one thread reads ~80k HAM10000 files/s, more
# read slower and contend for the GIL with the decoding and forward threads (H200, ResNet-50 cold: 15 threads
# 6.5-8.1k images/s, 2 threads 8.9-11.0k, 1 thread 10.8-11.8k; benchmarks/cold_path_breakdown.py, docs/speed.md)
READER_THREADS = 1
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
        workers: threads reading files (and PIL worker processes, see the module doc); 0 does
            everything in the caller's thread.
        cache_dir: where the decoded-image cache lives (None: no cache). It is read when it
            exists; it is written when ``rows`` are all the dataset's rows and this is the only
            process (under torchrun the ranks read a cache but do not write one).
    After iterating, ``stats`` counts the images per source and ``cache_state`` says what the cache
    did ("off", "hit", "written": being written in the background, see
    :func:`wait_for_decoded_writes`; "miss": a subset, not cached).
    """

    def __init__(self, dataset: ImageDataset, rows: np.ndarray, preprocessing: Preprocessing, *,
                 device: torch.device, batch_size: int, workers: int, decode: str = "pil",
                 cache_dir: Path | None = None):
        if decode not in ("pil", "nvjpeg"):
            raise ValueError(f"ImageBatches decodes with 'pil' or 'nvjpeg', got {decode!r} (resolve 'auto' "
                             "with resolve_decode first)")
        self.dataset, self.rows, self.preprocessing = dataset, np.asarray(rows, dtype=np.int64), preprocessing
        self.device, self.batch_size, self.workers, self.decode = device, int(batch_size), int(workers), decode
        self.cache_dir = cache_dir
        self.size = preprocessing.input_size
        self.stats: Counter = Counter()
        self.cache_state = "off"
        self._tensor_decode = decode == "nvjpeg" and takes_files_as_images(dataset) and (
            preprocessing.interpolation in ("bicubic", "bilinear"))
        self._pil_processes = self.workers >= 2 and isinstance(dataset, FileImageDataset)
        self._max_pixels = Image.MAX_IMAGE_PIXELS

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    # -- iteration --------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        key = decoded_key(self.dataset, self.preprocessing, self.decode) if self.cache_dir is not None else None
        path = decoded_path(self.cache_dir, key) if key is not None else None
        if path is not None:
            wait_for_decoded_writes(path)  # a file this process is still writing is read once it is complete
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
        self.cache_state = "written"
        yield from self._run(None, _CacheWriter(path, key, self.device))

    def _run(self, cached: np.memmap | None, copier: "_CacheWriter | None") -> Iterator[tuple[int, torch.Tensor]]:
        starts = list(range(0, len(self.rows), self.batch_size))
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="images") if self.workers > 0 else None
        side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        pil_batches = None
        if cached is None and not self._tensor_decode and self._pil_processes:
            pil_batches = iter(data_loader(_Crops(self.dataset, self.rows, self.preprocessing),
                                           batch_size=self.batch_size, num_workers=self.workers,
                                           collate_fn=_collate_crops))
        reads: dict[int, list[Future]] = {}
        complete = False
        try:
            def make(start: int):
                return self._batch(start, cached, pool, side, copier, pil_batches, reads)
            batches = (make(start) for start in starts) if pool is None else _prefetch(make, starts, PREFETCH_BATCHES)
            for start, (pixels, ready) in zip(starts, batches):
                if ready is not None:
                    torch.cuda.current_stream(self.device).wait_event(ready)
                    pixels.record_stream(torch.cuda.current_stream(self.device))
                yield start, pixels
            complete = True
        finally:
            if copier is not None:
                copier.end(complete)  # complete: the file is committed in the background; else deleted
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    # -- one batch (runs in the prefetch thread) ------------------------------------------------
    def _batch(self, start: int, cached, pool, side, copier, pil_batches, reads: dict) -> tuple:
        rows = self.rows[start:start + self.batch_size]
        stream = torch.cuda.stream(side) if side is not None else nullcontext()
        with stream:
            if cached is not None:
                pixels = self._from_cache(cached, rows)
                self.stats["cache"] += len(rows)
            elif self._tensor_decode:
                if pool is not None:  # this batch's files (unless read ahead) and the next batch's, in chunks
                    for ahead in (start, start + self.batch_size):
                        if ahead < len(self.rows) and ahead not in reads:
                            rows_ahead = self.rows[ahead:ahead + self.batch_size]
                            step = -(-len(rows_ahead) // max(1, min(self.workers, READER_THREADS)))
                            reads[ahead] = [pool.submit(self._read_files, rows_ahead[i:i + step])
                                            for i in range(0, len(rows_ahead), step)]
                    files = [item for future in reads.pop(start) for item in future.result()]
                else:
                    files = self._read_files(rows)
                pixels = self._decode_tensors(rows, files, pool)
            elif pil_batches is not None:
                crops, errors = next(pil_batches)
                _raise_unreadable(errors)
                self.stats["pil"] += len(rows)
                pixels = self._to_device(crops)
            else:
                pixels = self._to_device(self._pil(rows, pool))
            if copier is not None:
                copier.put(start, pixels)
            ready = None
            if side is not None:
                ready = torch.cuda.Event()
                ready.record(side)
        return pixels, ready

    def _from_cache(self, cached: np.memmap, rows: np.ndarray) -> torch.Tensor:
        host = torch.empty((len(rows), 3, self.size, self.size), dtype=torch.uint8,
                           pin_memory=self.device.type == "cuda")
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and bool(np.all(np.diff(rows) == 1)):
            read_rows(cached, int(rows[0]), host.numpy())  # a contiguous run: one preadv
        else:
            np.copyto(host.numpy(), cached[rows])
        return host.to(self.device, non_blocking=True) if self.device.type == "cuda" else host

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return host
        return (host if host.is_pinned() else host.pin_memory()).to(self.device, non_blocking=True)

    def _pil(self, rows: np.ndarray, pool) -> torch.Tensor:
        """PIL pixels [len(rows), 3, S, S] on the CPU (threads); an unreadable image raises (first one named)."""
        results = list(pool.map(self._pil_one, rows)) if pool is not None and len(rows) > 1 else [
            self._pil_one(row) for row in rows]
        _raise_unreadable([r for r in results if isinstance(r, str)])
        self.stats["pil"] += len(rows)
        if not results:
            return torch.empty((0, 3, self.size, self.size), dtype=torch.uint8)
        return torch.stack(results)

    def _pil_one(self, row) -> torch.Tensor | str:
        return _crop_or_error(self.dataset, self.preprocessing, int(row))

    def _read_files(self, rows: np.ndarray) -> list[tuple[bytearray | None, JpegInfo | None]]:
        """(bytes, frame facts or None) of each row's file (runs in a reader thread)."""
        out = []
        for row in rows:
            data = _read_file(self.dataset.path(int(row)))
            out.append((data, gpu_decodable(data, self._max_pixels) if data is not None else None))
        return out

    def _decode_tensors(self, rows: np.ndarray, files: list, pool) -> torch.Tensor:
        """nvjpeg for the JPEGs it may take, PIL for the rest; uint8 [len(rows), 3, S, S] on the device."""
        jpeg_positions = [p for p, (_, info) in enumerate(files) if info is not None]
        infos = [files[p][1] for p in jpeg_positions]
        out = torch.empty((len(rows), 3, self.size, self.size), dtype=torch.uint8, device=self.device)
        decoded_positions: list[int] = []
        try:
            for chunk in _chunks(jpeg_positions, infos, MAX_DECODE_PIXELS):
                images = _decode_jpegs([torch.frombuffer(files[p][0], dtype=torch.uint8) for p in chunk], self.device)
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
                pixels = self.preprocessing.geometry(torch.stack([images[i] for i in part]))
                targets = [positions[i] for i in part]
                if targets == list(range(targets[0], targets[0] + len(targets))):  # a run: no index tensor
                    out[targets[0]:targets[0] + len(targets)] = pixels
                else:
                    out[torch.as_tensor(targets, device=out.device)] = pixels


class FullImages:
    """Whole images (no resize or crop) as uint8 [3, H, W] on ``device``, for augmentation on the device:
    nvjpeg for the JPEGs it may take (see the module doc), ``load_image`` (PIL) for the rest.

    ``read`` (file bytes + JPEG sniff, any thread) and ``decode`` (the calling thread) are split so
    that a caller can read the next batch while it works on this one.
    """

    def __init__(self, dataset: ImageDataset, device: torch.device):
        self.dataset, self.device = dataset, device
        self.files = takes_files_as_images(dataset)
        self.stats: Counter = Counter()
        self._max_pixels = Image.MAX_IMAGE_PIXELS

    def read(self, rows: list[int]) -> list[tuple[bytearray | None, JpegInfo | None]]:
        if not self.files:
            return [(None, None)] * len(rows)
        out = []
        for row in rows:
            data = _read_file(self.dataset.path(int(row)))
            out.append((data, gpu_decodable(data, self._max_pixels) if data is not None else None))
        return out

    def decode(self, rows: list[int], files: list) -> list[torch.Tensor]:
        images: list[torch.Tensor | None] = [None] * len(rows)
        positions = [p for p, (_, info) in enumerate(files) if info is not None]
        try:
            for chunk in _chunks(positions, [files[p][1] for p in positions], MAX_DECODE_PIXELS):
                decoded = _decode_jpegs([torch.frombuffer(files[p][0], dtype=torch.uint8) for p in chunk], self.device)
                for position, image in zip(chunk, decoded):
                    images[position] = image
        except RuntimeError as error:
            log.warning("GPU JPEG decoding failed for a batch (%s); decoding its images with PIL", error)
        self.stats["nvjpeg"] += sum(image is not None for image in images)
        for position, image in enumerate(images):
            if image is None:
                pixels = np.asarray(self.dataset.load_image(int(rows[position])).convert("RGB"), dtype=np.uint8)
                images[position] = torch.from_numpy(pixels.copy()).permute(2, 0, 1).to(self.device)
                self.stats["pil"] += 1
        return images


class _Crops(Dataset):
    """Position -> (uint8 [3, S, S] via ``load_image`` + ``crop_uint8``, "" or the error message)."""

    def __init__(self, dataset: ImageDataset, rows: np.ndarray, preprocessing: Preprocessing):
        self.dataset, self.rows, self.preprocessing = dataset, rows, preprocessing

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, str]:
        result = _crop_or_error(self.dataset, self.preprocessing, int(self.rows[position]))
        if isinstance(result, str):
            size = self.preprocessing.input_size
            return torch.zeros((3, size, size), dtype=torch.uint8), result
        return result, ""


def _collate_crops(items: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, list[str]]:
    return torch.stack([pixels for pixels, _ in items]), [error for _, error in items if error]


def _crop_or_error(dataset: ImageDataset, preprocessing: Preprocessing, row: int) -> torch.Tensor | str:
    try:
        return preprocessing.crop_uint8(dataset.load_image(row))
    except UnreadableImageError as error:
        return str(error)


def _raise_unreadable(errors: list[str]) -> None:
    if errors:
        more = f" ({len(errors) - 1} more unreadable in this batch)" if len(errors) > 1 else ""
        raise UnreadableImageError(errors[0] + more)


def _read_file(path: Path) -> bytearray | None:
    """The file's bytes (None when unreadable: the PIL path then reports the error)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        data = bytearray(os.fstat(descriptor).st_size)
        view, done = memoryview(data), 0
        while done < len(data):
            count = os.readv(descriptor, [view[done:]])
            if count <= 0:
                return None
            done += count
        return data
    except OSError:
        return None
    finally:
        os.close(descriptor)


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


_PENDING: dict[str, threading.Thread] = {}  # cache files this process is still writing
_PENDING_LOCK = threading.Lock()
WRITE_BUDGET_BYTES = 4 << 30  # decoded pixels waiting to be written (on the device): beyond this, decoding waits


def wait_for_decoded_writes(path: Path | None = None) -> None:
    """Wait until this process's decoded-image cache writes (of ``path``, or all) are committed."""
    with _PENDING_LOCK:
        threads = [t for p, t in _PENDING.items() if path is None or p == str(path)]
    for thread in threads:
        thread.join()


class _CacheWriter:
    """Writes finished batches into a new decoded-image cache file from a thread of its own.

    The thread owns the file from start to commit: it copies each batch device -> host and
    ``pwrite``s it; after the last batch it closes, fsyncs and renames the file
    (:func:`benchmark.atomic.atomic_target`) while the caller moves on (the extraction does not
    wait for the disk). Batches wait on the device, up to ``WRITE_BUDGET_BYTES``; an aborted pass
    deletes the temporary file. A (non-daemon) pending write finishes before the interpreter exits.
    """

    def __init__(self, path: Path, key: dict, device: torch.device):
        self.path, self.key, self.device = path, key, device
        self.jobs: queue.Queue = queue.Queue()
        self.budget = threading.Semaphore(max(1, WRITE_BUDGET_BYTES >> 20))  # MiB tokens
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="decoded-cache-writer")
        with _PENDING_LOCK:
            _PENDING[str(path)] = self.thread
        self.thread.start()

    def put(self, start: int, pixels: torch.Tensor) -> None:
        """Queue ``pixels`` (ready on the current stream) for rows ``start ..``; blocks while over budget."""
        tokens = max(1, pixels.numel() >> 20)
        for _ in range(tokens):
            while not self.budget.acquire(timeout=0.1):
                if not self.thread.is_alive():  # the write failed (logged): nothing more to queue
                    return
        if not self.thread.is_alive():
            return
        ready = None
        if pixels.device.type == "cuda":
            ready = torch.cuda.Event()
            ready.record()
        self.jobs.put((start, pixels, ready, tokens))

    def end(self, complete: bool) -> None:
        self.jobs.put("commit" if complete else "abort")

    def _loop(self) -> None:
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        try:
            with atomic_target(self.path) as tmp:
                writer = DecodedWriter(tmp, self.key)
                try:
                    host = None
                    while True:
                        job = self.jobs.get()
                        if job in ("commit", "abort"):
                            if job == "abort":
                                raise _Aborted()
                            break
                        start, pixels, ready, tokens = job
                        if ready is not None:
                            with torch.cuda.stream(stream):
                                stream.wait_event(ready)
                                pixels.record_stream(stream)
                                if host is None or host.shape != pixels.shape:
                                    host = torch.empty(pixels.shape, dtype=torch.uint8, pin_memory=True)
                                host.copy_(pixels)  # synchronous on this thread's stream
                            array = host.numpy()
                        else:
                            array = pixels.numpy()
                        writer.write(start, array)
                        del pixels
                        for _ in range(tokens):
                            self.budget.release()
                finally:
                    writer.close()
        except _Aborted:
            pass
        except BaseException as error:  # the cache is an optimisation: a failed write is logged, never fatal
            self.error = error
            log.warning("could not write the decoded-image cache %s (%s); it will be decoded again next time",
                        self.path, error)
            while True:  # release a producer waiting on the budget
                try:
                    job = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if isinstance(job, tuple):
                    for _ in range(job[3]):
                        self.budget.release()
        finally:
            with _PENDING_LOCK:
                if _PENDING.get(str(self.path)) is threading.current_thread():
                    del _PENDING[str(self.path)]


class _Aborted(Exception):
    """The pass stopped early: the temporary cache file is deleted."""


def _prefetch(make: Callable, starts: list[int], depth: int) -> Iterator:
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
