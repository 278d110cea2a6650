"""Feature extraction with a persistent on-disk cache.

Features are the seam between heavy and cheap work: extracted once per (encoder weights,
preprocessing, dataset manifest, image set, numeric precision) and reused by kNN, linear,
few-shot and invariance. The cache key hashes everything that changes the numbers, so a changed
input re-extracts and stale features are never served.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from benchmark import distributed
from benchmark.atomic import atomic_write
from benchmark.cache import CACHE_ENV, default_cache_dir  # noqa: F401  (re-exported: callers import them from here)
from benchmark.device import autocast_dtype, default_workers
from datasets.base import DatasetError, ImageDataset, UnreadableImageError
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


class _PreprocessedImages(Dataset):
    """Dataset rows -> (network input [3, H, W], row, error message or "")."""

    def __init__(self, dataset: ImageDataset, indices: np.ndarray, transform: Callable):
        self.dataset, self.indices, self.transform = dataset, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        row = int(self.indices[position])
        try:
            return self.transform(self.dataset.load_image(row)), row, ""
        except UnreadableImageError as error:
            size = self.transform.input_size if hasattr(self.transform, "input_size") else 1
            return torch.zeros(3, size, size), row, str(error)


def feature_cache_key(encoder: Encoder, dataset: ImageDataset, indices: np.ndarray, precision: str,
                      layer: str = "pooled") -> dict:
    """Everything that changes the features; its hash names the cache file."""
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
    }


def _key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def extract_features(encoder: Encoder, dataset: ImageDataset, indices: np.ndarray | None = None, *,
                     device: torch.device = torch.device("cpu"), batch_size: int = 64,
                     num_workers: int | None = None, cache_dir: Path | None = None,
                     progress: Callable[[int], None] | None = None) -> Features:
    """Pooled features [N, D] of ``dataset`` rows ``indices`` (all rows by default), cached on disk.

    Runs the encoder in eval mode under ``inference_mode``; on CUDA with bf16 autocast and
    channels_last. An unreadable image stops extraction with a message naming the file. Under
    torchrun the images are sharded over ranks (strided) and gathered on every rank; only rank 0
    writes the cache.
    """
    indices = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
    precision = "bf16-autocast" if autocast_dtype(device) is not None else "fp32"
    key = feature_cache_key(encoder, dataset, indices, precision)
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
    if distributed.world_size() > 1:
        local = _run_encoder(encoder, dataset, indices[distributed.strided_positions(len(indices))], device,
                             batch_size, workers, progress)
        x = distributed.gather_strided(torch.from_numpy(local), len(indices)).numpy()
    else:
        x = _run_encoder(encoder, dataset, indices, device, batch_size, workers, progress)
    seconds = time.perf_counter() - start
    meta = {"seconds": seconds, "images_per_second": len(indices) / max(seconds, 1e-9), "device": str(device),
            "precision": precision, "cache_key": digest, "cache_hit": False, "world_size": distributed.world_size()}
    if cache_file is not None and distributed.is_main_process():
        _write_cache(cache_file, key, x, meta)
    return _assemble(dataset, indices, x, meta)


def _assemble(dataset: ImageDataset, indices: np.ndarray, x: np.ndarray, meta: dict) -> Features:
    return Features(x, dataset.targets[indices], dataset.ids[indices], dataset.groups[indices], indices, meta)


@torch.inference_mode()
def _run_encoder(encoder: Encoder, dataset: ImageDataset, indices: np.ndarray, device: torch.device,
                 batch_size: int, num_workers: int, progress: Callable[[int], None] | None) -> np.ndarray:
    was_training = encoder.training
    encoder.eval().to(device)
    if device.type == "cuda":
        encoder.to(memory_format=torch.channels_last)
    loader = DataLoader(_PreprocessedImages(dataset, indices, encoder.preprocessing), batch_size=batch_size,
                        shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    dtype = autocast_dtype(device)
    out = np.empty((len(indices), encoder.feature_dim), dtype=np.float32)
    filled = 0
    try:
        for images, rows, errors in loader:
            bad = [e for e in errors if e]
            if bad:
                raise UnreadableImageError(bad[0] + (f" ({len(bad) - 1} more unreadable in this batch)" if len(bad) > 1 else ""))
            images = images.to(device, non_blocking=True)
            if device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                features = encoder(images)
            if features.shape[1:] != (encoder.feature_dim,):
                raise DatasetError(f"encoder '{encoder.name}' returned features of shape {tuple(features.shape)}, "
                                   f"expected (N, {encoder.feature_dim})")
            out[filled:filled + len(rows)] = features.float().cpu().numpy()
            filled += len(rows)
            if progress is not None:
                progress(len(rows))
    finally:
        encoder.train(was_training)
    if not np.isfinite(out).all():
        log.warning("encoder '%s' produced non-finite features on '%s'", encoder.name, dataset.name)
    return out


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
