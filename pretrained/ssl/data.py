"""Pretraining data: images decoded once into a uint8 array, and each epoch's batch plan.

Images are decoded once (in parallel DataLoader workers), resized so the shorter side is
``decode_size`` and centre-cropped square (the same framing as the encoders' evaluation
preprocessing: resize shorter side, centre crop), then kept as uint8 [N, 3, S, S] in memory and
in the cache folder, so augmentation runs batched on the training device and a resumed run
starts at once.

The batch plan of an epoch is a pure function of (seed, epoch): a seeded permutation (or, with
``balanced``, a seeded class-balanced draw with replacement, N draws, each class equally
likely), cut into global batches of ``batch_size``; a last batch smaller than ``min_batch``
(2 images per rank) is folded into the one before, so no rank ever sees fewer than 2 images
(BatchNorm needs 2) and nothing is dropped. Under DDP each global batch is split into
``world_size`` near-equal shards (the DistributedSampler idea, without padding duplicates).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

from benchmark.atomic import atomic_write
from benchmark.workers import data_loader
from datasets.base import ImageDataset

log = logging.getLogger(__name__)

DECODE_FORMAT_VERSION = 1


class _Decoder(Dataset):
    """Dataset rows -> uint8 [3, S, S] (shorter side resized to S, centre crop)."""

    def __init__(self, dataset: ImageDataset, indices: np.ndarray, size: int, grayscale: bool):
        self.dataset, self.indices, self.size, self.grayscale = dataset, indices, size, grayscale

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> torch.Tensor:
        image = self.dataset.load_image(int(self.indices[position]))
        image = image.convert("L").convert("RGB") if self.grayscale else image.convert("RGB")
        image = TF.resize(image, self.size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        image = TF.center_crop(image, [self.size, self.size])
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def decode_images(dataset: ImageDataset, indices: np.ndarray, size: int, *, grayscale: bool = False,
                  cache_dir: Path | None = None, num_workers: int = 0) -> torch.Tensor:
    """uint8 [len(indices), 3, size, size] of the given dataset rows, cached on disk when ``cache_dir`` is set."""
    indices = np.asarray(indices, dtype=np.int64)
    key = {"format": DECODE_FORMAT_VERSION, "dataset": dataset.name, "content": dataset.content_hash(),
           "ids": hashlib.sha256("\n".join(dataset.ids[indices]).encode()).hexdigest(), "size": size,
           "grayscale": grayscale}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    path = Path(cache_dir) / "ssl-images" / f"{digest}.npy" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            array = np.load(path, allow_pickle=False)
            if array.shape == (len(indices), 3, size, size) and array.dtype == np.uint8:
                return torch.from_numpy(array)
        except (OSError, ValueError, EOFError):  # truncated by a kill, or foreign
            pass
        log.warning("decoded-image cache %s unreadable; decoding again", path)
    loader = data_loader(_Decoder(dataset, indices, size, grayscale), batch_size=64, num_workers=num_workers)
    images = torch.cat([batch for batch in loader]) if len(indices) else torch.zeros(0, 3, size, size, dtype=torch.uint8)
    if path is not None:
        try:
            atomic_write(path, lambda handle: np.save(handle, images.numpy()))
        except OSError as error:
            log.warning("cannot write the decoded-image cache %s (%s)", path, error)
    return images


def epoch_order(n: int, epoch: int, seed: int, labels: np.ndarray | None = None) -> np.ndarray:
    """Positions 0..n-1 in this epoch's order: a permutation, or a class-balanced draw when ``labels`` is given."""
    rng = np.random.default_rng([seed, epoch])
    if labels is None:
        return rng.permutation(n)
    classes, counts = np.unique(labels, return_counts=True)
    weight_of_class = dict(zip(classes.tolist(), (1.0 / (len(classes) * counts)).tolist()))
    weights = np.array([weight_of_class[int(label)] for label in labels])
    return rng.choice(n, size=n, replace=True, p=weights / weights.sum())


def batch_plan(order: np.ndarray, batch_size: int, min_batch: int = 2) -> list[np.ndarray]:
    """Cut ``order`` into batches of ``batch_size``; a last batch under ``min_batch`` joins the previous one."""
    if batch_size < min_batch:
        raise ValueError(f"batch size {batch_size} is smaller than the minimum {min_batch} "
                         f"(2 images per process: contrastive pairs and BatchNorm need them)")
    if len(order) < min_batch:
        raise ValueError(f"only {len(order)} image(s) to pretrain on; need at least {min_batch}")
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < min_batch:
        tail = batches.pop()
        batches[-1] = np.concatenate([batches[-1], tail])
    return batches


def rank_shards(batch_size: int, world_size: int) -> list[np.ndarray]:
    """Positions 0..batch_size-1 of a global batch cut into ``world_size`` near-equal, contiguous shares
    (rank r takes share r, so concatenating the ranks' outputs in rank order restores the batch order)."""
    return np.array_split(np.arange(batch_size), world_size)
