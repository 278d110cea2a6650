"""Running the invariance probe: transformed views through a frozen encoder, scored against the clean view.

Views are built on CPU workers (one item = one image under one chunk of a transform's parameters),
the encoder runs in eval mode under ``inference_mode`` in fp32 on every device (no autocast: bf16
rounding of f(x) and f(Tx), amplified by the whitening, would lower the similarities on GPUs only),
and each view's feature is compared with the clean view of the same image (built by the same
pipeline in the same run) under :class:`~invariances.whitening.Whitening`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from benchmark.workers import data_loader
from datasets.base import ImageDataset
from invariances.transforms import TransformGrid, ViewGeometry
from invariances.whitening import Whitening
from pretrained.encoder import Encoder

log = logging.getLogger(__name__)

CLEAN = "__clean__"


@dataclass
class InvarianceScores:
    """Scores of one transform: ``similarity`` and ``distance`` are [n_images, n_params] (all grid
    points, identity included; averages use ``grid.active``)."""

    grid: TransformGrid
    similarity: np.ndarray
    distance: np.ndarray

    def per_image(self, which: str = "similarity") -> np.ndarray:
        """[n_images] mean over the non-identity parameters."""
        values = self.similarity if which == "similarity" else self.distance
        active = self.grid.active
        if not active:
            raise ValueError(f"transform '{self.grid.name}' has no non-identity parameter point; raise k")
        return np.nanmean(values[:, active], axis=1)

    def per_parameter(self, which: str = "similarity") -> np.ndarray:
        """[n_params] mean over images (identity points included, flagged in the grid)."""
        values = self.similarity if which == "similarity" else self.distance
        return np.nanmean(values, axis=0)


@dataclass
class ProbeRun:
    scores: dict[str, InvarianceScores]
    n_views: int
    seconds: float
    meta: dict = field(default_factory=dict)


class _Views(Dataset):
    """Items: (image position, transform name, parameter indices) -> views [m, 3, S, S]."""

    def __init__(self, dataset: ImageDataset, rows: np.ndarray, items: list[tuple[int, str, list[int]]],
                 grids: dict[str, TransformGrid], geometry: ViewGeometry):
        self.dataset, self.rows, self.items, self.grids, self.geometry = dataset, rows, items, grids, geometry

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int):
        image_pos, name, indices = self.items[position]
        image = self.dataset.load_image(int(self.rows[image_pos]))
        if name == CLEAN:
            views = self.geometry.clean(image).unsqueeze(0)
        else:
            grid = self.grids[name]
            views = torch.stack([grid.view(image, j, self.geometry) for j in indices])
        return image_pos, name, indices, views


def _items(n_images: int, grids: list[TransformGrid], chunk: int) -> list[tuple[int, str, list[int]]]:
    items: list[tuple[int, str, list[int]]] = [(i, CLEAN, [0]) for i in range(n_images)]
    for i in range(n_images):
        for grid in grids:
            indices = list(range(len(grid.params)))
            items += [(i, grid.name, indices[s:s + chunk]) for s in range(0, len(indices), chunk)]
    return items


@torch.inference_mode()
def run_invariance(encoder: Encoder, dataset: ImageDataset, rows: np.ndarray, grids: list[TransformGrid],
                   whitening: Whitening, geometry: ViewGeometry, device: torch.device, *, chunk: int = 64,
                   num_workers: int = 0, progress: Callable[[int], None] | None = None) -> ProbeRun:
    """Score ``encoder``'s invariance to each grid on dataset ``rows``.

    Args:
        rows: dataset row indices of the images to transform (already sampled).
        grids: transforms with their parameter points (identity points are computed too, for the
            per-parameter curves, but never enter the averages).
        whitening: feature statistics (same encoder, same geometry).
        chunk: views per forward pass.
    Returns:
        per-transform similarity and distance matrices [n_images, n_params].
    """
    start = time.perf_counter()
    by_name = {g.name: g for g in grids}
    items = _items(len(rows), grids, chunk)
    loader = data_loader(_Views(dataset, rows, items, by_name, geometry), batch_size=None, shuffle=False,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    was_training = encoder.training
    encoder.eval().to(device)
    clean = torch.full((len(rows), encoder.feature_dim), float("nan"), dtype=torch.float64)
    pending: list[tuple[int, str, list[int], torch.Tensor]] = []
    n_views = 0
    try:
        for image_pos, name, indices, views in loader:
            views = views.to(device, non_blocking=True)
            features = encoder(views).float().cpu().to(torch.float64)
            n_views += len(views)
            if progress is not None:
                progress(1)
            if name == CLEAN:
                clean[image_pos] = features[0]
            else:
                pending.append((image_pos, name, indices, features))
    finally:
        encoder.train(was_training)
    scores = {g.name: InvarianceScores(g, np.full((len(rows), len(g.params)), np.nan),
                                       np.full((len(rows), len(g.params)), np.nan)) for g in grids}
    for image_pos, name, indices, features in pending:  # clean views come first, so all are known here
        reference = clean[image_pos].expand_as(features)
        scores[name].similarity[image_pos, indices] = whitening.similarity(reference, features).numpy()
        scores[name].distance[image_pos, indices] = whitening.distance(reference, features).numpy()
    return ProbeRun(scores, n_views, time.perf_counter() - start, {"n_items": len(items)})


def total_items(n_images: int, grids: list[TransformGrid], chunk: int) -> int:
    """Number of loader items (for progress bars)."""
    return len(_items(n_images, grids, chunk))
