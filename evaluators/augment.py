"""Image pipelines for fine-tuning: seeded train augmentation and test-time copies (PIL, in DataLoader workers).

Augmentations act on PIL images (random resized crop, flips, rotation, hue), then the encoder's own
:class:`~pretrained.preprocessing.Preprocessing` turns the crop into network input (grey handling
and ``normalize``), so every encoder gets the statistics it was trained with. Randomness comes from
a per-image seed (see :mod:`evaluators.sampling`), never from worker or process state. Validation
and test inputs (no augmentation) come from :class:`evaluators.finetune.EvalBatches` instead.

On CUDA, :class:`DeviceAugmentedImages` runs the very same transform objects with the same seeds
on images decoded on the GPU (torchvision's transforms take tensors): the same crop boxes, flips,
angles and hue shifts, resampled by torchvision's tensor kernels instead of PIL's (docs/speed.md).
"""
from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from benchmark.image_batches import READER_THREADS, FullImages
from datasets.base import ImageDataset
from pretrained.preprocessing import Preprocessing

_INTERPOLATION = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


def train_augmentation(options: dict, size: int, preprocessing: Preprocessing) -> Callable[[Image.Image], Image.Image]:
    """PIL -> PIL augmentation at ``size`` x ``size`` from the fine-tune options.

    ``rrc_scale`` [lo, hi]: RandomResizedCrop(size, scale, ratio 3/4..4/3, ``rrc_interpolation``);
    ``null`` replaces it by the encoder's deterministic resize + centre crop at ``size``. Then
    ``hflip``/``vflip`` (p 0.5), ``rotation`` (degrees, uniform +-, black fill), ``hue``
    (ColorJitter hue +-).
    """
    steps: list[Callable] = []
    if options.get("rrc_scale"):
        scale = options["rrc_scale"]
        if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and 0 < float(scale[0]) <= float(scale[1]) <= 1):
            raise ValueError(f"rrc_scale must be [low, high] with 0 < low <= high <= 1 (or null for no crop), got {scale!r}")
        lo, hi = float(scale[0]), float(scale[1])
        interpolation = options.get("rrc_interpolation", "bicubic")
        if interpolation not in _INTERPOLATION:
            raise ValueError(f"rrc_interpolation must be one of {sorted(_INTERPOLATION)}, got {interpolation!r}")
        steps.append(transforms.RandomResizedCrop(size, scale=(lo, hi), interpolation=_INTERPOLATION[interpolation]))
    else:
        steps.append(preprocessing.with_input_size(size).geometry)
    if options.get("hflip"):
        steps.append(transforms.RandomHorizontalFlip())
    if options.get("vflip"):
        steps.append(transforms.RandomVerticalFlip())
    if float(options.get("rotation") or 0):
        steps.append(transforms.RandomRotation(float(options["rotation"])))
    if float(options.get("hue") or 0):
        steps.append(transforms.ColorJitter(hue=float(options["hue"])))
    return transforms.Compose(steps)


def network_input(preprocessing: Preprocessing, size: int) -> Preprocessing:
    """The encoder's pipeline for an image that is already ``size`` x ``size`` (grey + normalise only)."""
    return dataclasses.replace(preprocessing, input_size=size, resize_size=None)


def seeded(augment: Callable[[Image.Image], Image.Image], image: Image.Image, seed: int) -> Image.Image:
    """``augment(image)`` with torch's RNG seeded by ``seed`` (the global RNG state is restored)."""
    generator = torch.random.default_generator  # torchvision's random transforms draw from it
    saved = generator.get_state()
    generator.manual_seed(int(seed))
    try:
        return augment(image)
    finally:
        generator.set_state(saved)


class AugmentedImages(Dataset):
    """Items ``(row, seed)`` -> (input [3, S, S], label) with a seeded augmentation.

    ``rows`` maps item rows to dataset rows (e.g. the train split's indices). For a multi-label
    dataset the label is the float32 [L] row of its 0/1 finding matrix.
    """

    def __init__(self, dataset: ImageDataset, rows: np.ndarray, augment: Callable, preprocessing: Preprocessing, size: int):
        self.dataset, self.rows, self.augment = dataset, np.asarray(rows), augment
        self.to_input = network_input(preprocessing, size)
        self.labels = dataset.targets

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: tuple[int, int]):
        row, seed = item
        index = int(self.rows[row])
        image = seeded(self.augment, self.dataset.load_image(index), seed)
        target = self.labels[index]
        return self.to_input(image), (torch.as_tensor(target, dtype=torch.float32) if target.ndim else int(target))


class DeviceAugmentedImages:
    """:class:`AugmentedImages` on the training device: ``batches(sampler)`` -> (input [B, 3, S, S], targets).

    Files are read one batch ahead in up to ``READER_THREADS`` threads, decoded by nvjpeg (PIL for
    files it does not take), and augmented in the calling thread (the only one that touches torch's global RNG,
    which ``seeded`` reseeds per image).
    """

    def __init__(self, dataset: ImageDataset, rows: np.ndarray, augment: Callable, preprocessing: Preprocessing,
                 size: int, device: torch.device, workers: int):
        self.dataset, self.rows, self.augment = dataset, np.asarray(rows), augment
        self.to_input = network_input(preprocessing, size)
        self.labels = dataset.targets
        self.images = FullImages(dataset, device)
        self.workers = max(1, min(int(workers), READER_THREADS))  # more reader threads only contend (docs/speed.md)

    def __len__(self) -> int:
        return len(self.rows)

    def batches(self, sampler: Iterable[list[tuple[int, int]]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="train-images")

        def read(items):
            rows = [int(self.rows[row]) for row, _ in items]
            step = -(-len(rows) // self.workers)
            return rows, [pool.submit(self.images.read, rows[i:i + step]) for i in range(0, len(rows), step)]
        try:
            stream = iter(sampler)
            items = next(stream, None)
            pending = read(items) if items is not None else None
            while items is not None:
                rows, futures = pending
                files = [item for future in futures for item in future.result()]
                following = next(stream, None)
                pending = read(following) if following is not None else None
                images = self.images.decode(rows, files)
                crops = torch.stack([seeded(self.augment, image, seed) for image, (_, seed) in zip(images, items)])
                targets = [self.labels[row] for row in rows]
                target = (torch.as_tensor(np.stack(targets), dtype=torch.float32) if np.ndim(targets[0])
                          else torch.as_tensor(np.asarray(targets, dtype=np.int64)))
                yield self.to_input.input_from_uint8(crops), target
                items = following
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
