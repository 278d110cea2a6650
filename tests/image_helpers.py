"""Test helpers for image loading: HAM10000-like JPEGs made in memory, file datasets, batch collection."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import torch
from PIL import Image

from benchmark.image_batches import ImageBatches
from datasets.base import FileImageDataset


def lesion_like(seed: int, width: int = 60, height: int = 45) -> np.ndarray:
    """A smooth skin-and-blob RGB image with mild texture, uint8 [H, W, 3] (JPEG-friendly, like dermoscopy)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    cx, cy, r = rng.uniform(0.3, 0.6), rng.uniform(0.25, 0.45), rng.uniform(0.1, 0.25)
    blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r ** 2))
    skin = np.array([220, 170, 140]) * (0.9 + 0.1 * x[..., None])
    lesion = np.array([110, 60, 40])
    image = skin * (1 - blob[..., None]) + lesion * blob[..., None] + rng.normal(0, 6, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def jpeg_bytes(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=92, **options)
    return buffer.getvalue()


def file_dataset(tmp_path, files: dict[str, bytes]) -> FileImageDataset:
    paths = []
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        paths.append(str(path))
    table = pd.DataFrame({"image_id": list(files), "path": paths, "label": np.arange(len(files)) % 2,
                          "group": list(files)})
    return FileImageDataset("files", table, ["a", "b"], root=tmp_path)


def collect(batches: ImageBatches) -> torch.Tensor:
    return torch.cat([pixels for _, pixels in batches])
