"""Synthetic files in the official MedMNIST npz layout, for tests and the GPU fidelity measurement.

``write_medmnist_npz`` writes ``{train,val,test}_{images,labels}`` with each flag's channel count
(uint8 [N, S, S] for grey flags, [N, S, S, 3] for RGB ones) and label layout ((N, 1) as published,
(N,) as in re-saved copies, or (N, 14) for ChestMNIST). The labels are learnable: class ``k`` (or,
for ChestMNIST, each positive finding ``k``) brightens its own cell of a 4x4 grid, on a noisy
background, so a few epochs separate the classes. Never a stand-in for the real data's numbers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from datasets.medmnist_info import MEDMNIST_2D, file_name

SPLIT_NAMES = ("train", "val", "test")


def synthetic_split(flag: str, n: int, size: int, rng: np.random.Generator, flat_labels: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, size, size(, 3)], labels) of one split of ``flag``.

    Single-label: every class appears (labels cycle 0..K-1), shape (n, 1) or (n,) with ``flat_labels``.
    ChestMNIST: (n, 14) uint8 with every finding positive and negative at least once when n >= 2.
    """
    facts = MEDMNIST_2D[flag]
    n_labels, channels = len(facts["labels"]), int(facts["n_channels"])
    multilabel = facts["task"].startswith("multi-label")
    if multilabel:
        labels = (rng.random((n, n_labels)) < 0.3).astype(np.uint8)
        labels[0], labels[-1] = 1, 0  # each finding has a positive and a negative
        marks = labels.astype(bool)
    else:
        labels = (np.arange(n) % n_labels).astype(np.uint8)
        marks = np.eye(n_labels, dtype=bool)[labels]
    images = rng.integers(0, 90, size=(n, size, size), dtype=np.int64)
    cell = size // 4
    for k in range(n_labels):
        row, col = divmod(k % 16, 4)
        images[marks[:, k], row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] += 140
    images = np.clip(images, 0, 255).astype(np.uint8)
    if channels == 3:
        images = np.repeat(images[..., None], 3, axis=3)
    if not multilabel:
        labels = labels if flat_labels else labels[:, None]
    return images, labels


def write_medmnist_npz(folder: Path, flag: str, sizes: tuple[int, int, int] = (24, 12, 12), size: int = 28,
                       seed: int = 0, flat_labels: bool = False, name: str | None = None) -> Path:
    """Write ``folder/{flag}.npz`` (``{flag}_{size}.npz`` for size != 28, or ``name``) with train/val/test of ``sizes``."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(SPLIT_NAMES, sizes):
        images, labels = synthetic_split(flag, n, size, rng, flat_labels)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or file_name(flag, size))
    np.savez_compressed(path, **arrays)
    return path
