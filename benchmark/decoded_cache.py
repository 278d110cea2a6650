"""The decoded-image cache: every image of a dataset as uint8 at one preprocessing geometry, memory-mapped.

Decoding and resizing are the expensive part of extraction; encoders that share a geometry
(input size, resize size, interpolation: e.g. every torchvision ResNet at 224/224 bicubic) get the
very same uint8 pixels, so the first extraction writes them once and later ones read them from a
memory map (uint8 -> device -> normalise -> network). Colour handling (grey, mean/std, histogram
normalisation) comes after the cache, so it is not part of the key.

File: ``<cache>/decoded/<hh>/<sha256 of the key>.u8``: a 4 KiB header (magic line + JSON key and
shape) then the C-ordered uint8 array [N, 3, S, S] of all dataset rows in dataset order, readable
as ``np.memmap(path, uint8, "r", offset=4096, shape=...)``. Written through
:func:`benchmark.atomic.atomic_target` (temp file, fsync, rename); a file whose header does not
match its key exactly or whose size is not header + array (truncated, foreign) is ignored and
rebuilt. Bulk transfers use ``pwrite``/``preadv`` (one system call per batch instead of a page fault per
4 KiB; twice the memory map's write rate on the 2-core development machine); random rows come
through the memory map.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from datasets.base import ImageDataset
from pretrained.preprocessing import Preprocessing

log = logging.getLogger(__name__)

DECODED_FORMAT_VERSION = 1
MAGIC = b"medtransfer decoded images\n"
HEADER_BYTES = 4096


def decoded_key(dataset: ImageDataset, preprocessing: Preprocessing, decode: str) -> dict:
    """What decides the cached pixels: the dataset content, the geometry and the decoder ("pil" / "nvjpeg")."""
    return {"format": DECODED_FORMAT_VERSION, "dataset": dataset.name, "content": dataset.content_hash(),
            "n_images": len(dataset), "geometry": preprocessing.geometry_key(), "decode": decode}


def decoded_path(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / "decoded" / digest[:2] / f"{digest}.u8"


def array_shape(key: dict) -> tuple[int, int, int, int]:
    size = int(key["geometry"]["input_size"])
    return int(key["n_images"]), 3, size, size


def open_decoded(path: Path, key: dict) -> np.memmap | None:
    """The cached array [N, 3, S, S] (read-only memory map), or None when absent, foreign or truncated."""
    if not path.is_file():
        return None
    shape = array_shape(key)
    try:
        with open(path, "rb") as handle:
            header = handle.read(HEADER_BYTES)
        if not header.startswith(MAGIC):
            raise ValueError("not a decoded-image cache file")
        stored = json.loads(header[len(MAGIC):].rstrip(b"\0 \n").decode())
        if stored.get("key") != key or tuple(stored.get("shape", ())) != shape:
            raise ValueError("written for another dataset, geometry or decoder")
        expected = HEADER_BYTES + int(np.prod(shape))
        if path.stat().st_size != expected:
            raise ValueError(f"size {path.stat().st_size} bytes, expected {expected} (truncated?)")
        return np.memmap(path, dtype=np.uint8, mode="r", offset=HEADER_BYTES, shape=shape)
    except (OSError, ValueError, UnicodeDecodeError) as error:
        log.warning("ignoring decoded-image cache %s (%s); decoding again", path, error)
        return None


class DecodedWriter:
    """Writes batches of rows into a new cache file at the temporary path ``tmp`` with ``pwrite``
    (large writes: no page fault per 4 KiB as through a writable memory map)."""

    def __init__(self, tmp: Path, key: dict):
        shape = array_shape(key)
        self.image_bytes = int(np.prod(shape[1:]))
        header = MAGIC + json.dumps({"key": key, "shape": list(shape)}, sort_keys=True).encode() + b"\n"
        if len(header) > HEADER_BYTES:
            raise ValueError(f"decoded-image cache header too long ({len(header)} bytes)")
        self.descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(self.descriptor, header.ljust(HEADER_BYTES, b"\0"), 0)
        os.ftruncate(self.descriptor, HEADER_BYTES + shape[0] * self.image_bytes)

    def write(self, start: int, rows: np.ndarray) -> None:
        """``rows``: uint8 [B, 3, S, S] (C-contiguous) for rows ``start .. start + B - 1``."""
        view = memoryview(np.ascontiguousarray(rows)).cast("B")
        offset, done = HEADER_BYTES + start * self.image_bytes, 0
        while done < len(view):
            done += os.pwrite(self.descriptor, view[done:], offset + done)

    def close(self) -> None:
        if self.descriptor >= 0:
            os.close(self.descriptor)
            self.descriptor = -1


def read_rows(cached: np.memmap, start: int, out: np.ndarray) -> None:
    """Rows ``start .. start + len(out) - 1`` of an open cache into ``out`` with ``preadv`` (no page faults)."""
    view = memoryview(out).cast("B")
    offset = int(cached.offset) + start * int(np.prod(cached.shape[1:]))
    descriptor = os.open(cached.filename, os.O_RDONLY)
    try:
        done = 0
        while done < len(view):
            count = os.preadv(descriptor, [view[done:]], offset + done)
            if count <= 0:
                raise OSError(f"decoded-image cache {cached.filename} ended early")
            done += count
    finally:
        os.close(descriptor)
