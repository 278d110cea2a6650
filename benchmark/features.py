"""Feature extraction with a persistent on-disk cache.

Features are the seam between heavy and cheap work: extracted once per (encoder weights,
preprocessing, dataset manifest, image set, numeric precision) and reused by kNN, linear,
few-shot and invariance. The cache key hashes everything that changes the numbers, so a changed
input re-extracts and stale features are never served.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import weakref
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmark import distributed
from benchmark.atomic import atomic_write
from benchmark.cache import CACHE_ENV, default_cache_dir  # noqa: F401  (re-exported: callers import them from here)
from benchmark.device import autocast_dtype, conv_memory_format, default_workers
from benchmark.image_batches import ImageBatches, resolve_decode
from datasets.base import DatasetError, ImageDataset
from pretrained.encoder import Encoder

log = logging.getLogger(__name__)

FEATURE_FORMAT_VERSION = 1


@dataclass
class Features:
    """Pooled features of a set of images.

    Attributes:
        x: float32 [N, D]; y: int64 [N] (uint8 [N, L] for a multi-label dataset); ids: str [N];
        groups: str [N]; indices: int [N] dataset rows.
        meta: extraction facts (images/s, seconds, device, cache key, cache hit).
    """

    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    groups: np.ndarray
    indices: np.ndarray
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)

    def take(self, rows: np.ndarray) -> "Features":
        """Rows of this set (positions, not dataset indices)."""
        return Features(self.x[rows], self.y[rows], self.ids[rows], self.groups[rows], self.indices[rows], self.meta)

    def select(self, dataset_indices: np.ndarray) -> "Features":
        """The features of these dataset rows (all must be present)."""
        position = {int(i): p for p, i in enumerate(self.indices)}
        return self.take(np.array([position[int(i)] for i in dataset_indices], dtype=np.int64))


def feature_cache_key(encoder: Encoder, dataset: ImageDataset, indices: np.ndarray, precision: str,
                      layer: str = "pooled", decode: str = "pil", compiled: bool = False) -> dict:
    """Everything that changes the features; its hash names the cache file.

    ``decode`` ("pil" / "nvjpeg") and ``compiled`` (torch.compile) change the numbers within the
    stated tolerance (docs/speed.md), so features of one path are never served for another.
    """
    ids = dataset.ids[indices]
    return {
        "format": FEATURE_FORMAT_VERSION,
        "encoder": encoder.name,
        "weights_sha256": encoder.provenance.get("weights_sha256"),
        # one file can hold several networks (MoCo's encoder_q and encoder_k): the prefix picks one
        "key_prefix": encoder.provenance.get("key_prefix"),
        "preprocessing": encoder.preprocessing.to_dict(),
        "dataset": dataset.name,
        "content": dataset.content_hash(),
        "images_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
        "n_images": int(len(ids)),
        "precision": precision,
        "layer": layer,
        "decode": decode,
        "compiled": bool(compiled),
    }


def _key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def extract_features(encoder: Encoder, dataset: ImageDataset, indices: np.ndarray | None = None, *,
                     device: torch.device = torch.device("cpu"), batch_size: int = 64,
                     num_workers: int | None = None, cache_dir: Path | None = None,
                     progress: Callable[[int], None] | None = None, decode: str = "auto",
                     compile: bool = False) -> Features:
    """Pooled features [N, D] of ``dataset`` rows ``indices`` (all rows by default), cached on disk.

    Runs the encoder in eval mode under ``inference_mode``; on CUDA with bf16 autocast and
    channels_last (NCHW for networks with depthwise convolutions, ``conv_memory_format``). Images come
    as uint8 batches from :class:`benchmark.image_batches.ImageBatches` (decoded-image cache, nvjpeg
    on the GPU, or PIL in ``num_workers`` threads; ``decode`` picks, "auto" = nvjpeg on CUDA) and are
    normalised on the device. ``compile`` runs the encoder through
    ``torch.compile`` (the last batch is padded to the batch size so one graph serves all). An
    unreadable image stops extraction with a message naming the file. Under torchrun the images are
    sharded over ranks (strided) and gathered on every rank; only rank 0 writes the cache.
    """
    indices = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
    precision = "bf16-autocast" if autocast_dtype(device) is not None else "fp32"
    decoder = resolve_decode(decode, device)
    key = feature_cache_key(encoder, dataset, indices, precision, decode=decoder, compiled=compile)
    digest = _key_hash(key)
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / "features" / digest[:2] / f"{digest}.npz"
        cached = _read_cache(cache_file, key)
        if distributed.all_agree(cached is not None):  # every rank takes the same path
            x, meta = cached
            meta["cache_hit"] = True
            return _assemble(dataset, indices, x, meta)
    start = time.perf_counter()
    workers = default_workers() if num_workers is None else num_workers
    local_rows = indices[distributed.strided_positions(len(indices))] if distributed.world_size() > 1 else indices
    batches = ImageBatches(dataset, local_rows, encoder.preprocessing, device=device, batch_size=batch_size,
                           workers=workers, decode=decoder, cache_dir=cache_dir)
    x, facts = _run_encoder(encoder, batches, device, compile, progress)
    if distributed.world_size() > 1:
        x = distributed.gather_strided(torch.from_numpy(x), len(indices)).numpy()
    seconds = time.perf_counter() - start
    meta = {"seconds": seconds, "images_per_second": len(indices) / max(seconds, 1e-9), "device": str(device),
            "precision": precision, "decode": decoder, "compiled": bool(compile), "batch_size": int(batch_size),
            "images_by_source": dict(batches.stats), "decoded_cache": batches.cache_state, **facts,
            "cache_key": digest, "cache_hit": False, "world_size": distributed.world_size()}
    if not np.isfinite(x).all():
        log.warning("encoder '%s' produced non-finite features on '%s'", encoder.name, dataset.name)
    if cache_file is not None and distributed.is_main_process():
        _write_cache(cache_file, key, x, meta)
    return _assemble(dataset, indices, x, meta)


def extraction_facts(meta: dict) -> dict:
    """The facts of ``Features.meta`` a record carries as provenance: which path and precision made the features."""
    names = ("device", "precision", "decode", "compiled", "batch_size", "images_by_source", "decoded_cache",
             "cache_hit", "world_size", "seconds", "images_per_second", "compile_seconds")
    return {name: meta[name] for name in names if name in meta}


def _assemble(dataset: ImageDataset, indices: np.ndarray, x: np.ndarray, meta: dict) -> Features:
    return Features(x, dataset.targets[indices], dataset.ids[indices], dataset.groups[indices], indices, meta)


_COMPILED: "weakref.WeakKeyDictionary[Encoder, torch.nn.Module]" = weakref.WeakKeyDictionary()


def compiled_encoder(encoder: Encoder) -> torch.nn.Module:
    """``torch.compile(encoder)``, made once per encoder object (its first call compiles)."""
    if encoder not in _COMPILED:
        _COMPILED[encoder] = torch.compile(encoder, dynamic=False)
    return _COMPILED[encoder]


def _run_encoder(encoder: Encoder, batches: ImageBatches, device: torch.device, compile: bool,
                 progress: Callable[[int], None] | None) -> tuple[np.ndarray, dict]:
    """Features float32 [len(batches.rows), D] and timing facts.

    The encoder is moved (and its memory format set) outside inference mode: weights moved inside
    it become inference tensors, which a later cell reusing the run's encoder could not train or
    take gradients through (saliency, fine-tuning).
    """
    was_training = encoder.training
    encoder.eval().to(device)
    cuda = device.type == "cuda"
    memory_format = conv_memory_format(encoder, device) if cuda else None
    if memory_format is not None:
        encoder.to(memory_format=memory_format)
    network = compiled_encoder(encoder) if compile else encoder
    dtype = autocast_dtype(device)
    n, dim = len(batches.rows), encoder.feature_dim
    out = torch.empty((n, dim), dtype=torch.float32, pin_memory=cuda)
    facts: dict = {}
    preprocessing = encoder.preprocessing
    try:
        with torch.inference_mode(), contextlib.closing(iter(batches)) as stream:
            for start, pixels in stream:
                count = len(pixels)
                x = preprocessing.input_from_uint8(pixels)
                if compile and count < batches.batch_size:  # one static shape: pad the last batch
                    x = torch.cat([x, x.new_zeros((batches.batch_size - count, *x.shape[1:]))])
                if memory_format is not None:
                    x = x.contiguous(memory_format=memory_format)
                tick = time.perf_counter()
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    features = network(x)
                if compile and "compile_seconds" not in facts:
                    if cuda:
                        torch.cuda.synchronize(device)
                    facts["compile_seconds"] = time.perf_counter() - tick  # the first call compiles
                if features.shape[1:] != (dim,):
                    raise DatasetError(f"encoder '{encoder.name}' returned features of shape {tuple(features.shape)}, "
                                       f"expected (N, {dim})")
                out[start:start + count].copy_(features[:count].float(), non_blocking=cuda)
                if progress is not None:
                    progress(count)
        if cuda:
            torch.cuda.synchronize(device)
    finally:
        encoder.train(was_training)
    return out.numpy(), facts


def _read_cache(path: Path, key: dict) -> tuple[np.ndarray, dict] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            stored_key = json.loads(str(data["key"]))
            meta = json.loads(str(data["meta"]))
            x = data["x"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:  # truncated, foreign, old format
        log.warning("ignoring unreadable feature cache %s (%s); re-extracting", path, error)
        return None
    if stored_key != key or x.ndim != 2 or x.shape[0] != key["n_images"]:
        log.warning("feature cache %s does not match its key; re-extracting", path)
        return None
    return x, meta


def _write_cache(path: Path, key: dict, x: np.ndarray, meta: dict) -> None:
    """Best effort: a cache that cannot be written (full disk, read-only) costs a warning, not the run."""
    try:
        atomic_write(path, lambda handle: np.savez(handle, x=x, key=np.array(json.dumps(key, sort_keys=True)),
                                                   meta=np.array(json.dumps(meta))))
    except OSError as error:
        log.warning("cannot write the feature cache %s (%s); features will be extracted again next time", path, error)
