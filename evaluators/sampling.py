"""Training batches as a pure function of (seed, step): resumable and identical on any number of GPUs.

The train split is read as an endless stream of dataset rows. Epoch ``e`` of the stream is a
permutation of the n train rows (``torch.randperm``), or, with ``balanced=True``, n draws with
replacement weighted ``max_count / count[class]`` (exactly what ``WeightedRandomSampler`` draws),
from a generator seeded by ``(seed, e)``. Global batch ``s`` is stream positions
``[s*B, (s+1)*B)`` (batches may straddle epochs, so every step has exactly B images); under DDP
rank ``r`` of W takes the contiguous slice ``[r*B/W, (r+1)*B/W)``. Each position also carries an
augmentation seed derived from ``(seed, position)``, so the crops and flips an image gets do not
depend on data-loader workers, ranks or restarts. Resuming needs only the step.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

_MASK = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64 finaliser: a fast, well-spread 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (order matters); stable across runs and platforms."""
    state = 0
    for part in parts:
        state = _mix64(state ^ (int(part) & _MASK))
    return state >> 1


AUGMENT_STREAM, EPOCH_STREAM, TTA_STREAM, TORCH_STREAM = 1, 2, 3, 4


class StreamBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, for steps ``start_step .. end_step - 1``, this rank's share of each global batch.

    Each element is ``(row, augmentation_seed)`` where ``row`` indexes ``labels`` (the train
    rows). ``batch_size`` is the global batch and must be divisible by ``world_size``.
    """

    def __init__(self, labels: np.ndarray, batch_size: int, seed: int, balanced: bool = False, start_step: int = 0,
                 end_step: int = 0, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_size % world_size:
            raise ValueError(f"the global batch size {batch_size} is not divisible by the {world_size} processes; "
                             f"use a batch size that is a multiple of --nproc_per_node")
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) == 0:
            raise ValueError("no training images")
        self.n = len(self.labels)
        self.batch_size, self.seed, self.balanced = batch_size, int(seed), bool(balanced)
        self.start_step, self.end_step = int(start_step), int(end_step)
        self.rank, self.world_size = rank, world_size
        counts = np.bincount(self.labels)
        self.weights = torch.as_tensor(counts.max() / counts[self.labels], dtype=torch.float64)

    @lru_cache(maxsize=2)
    def epoch_rows(self, epoch: int) -> np.ndarray:
        """The n rows of stream epoch ``epoch``."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, EPOCH_STREAM, epoch))
        if self.balanced:
            rows = torch.multinomial(self.weights, self.n, replacement=True, generator=generator)
        else:
            rows = torch.randperm(self.n, generator=generator)
        return rows.numpy()

    def global_batch(self, step: int) -> list[tuple[int, int]]:
        """All B ``(row, augmentation_seed)`` pairs of global batch ``step``."""
        out = []
        for position in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, offset = divmod(position, self.n)
            out.append((int(self.epoch_rows(epoch)[offset]), derive_seed(self.seed, AUGMENT_STREAM, position)))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        share = self.batch_size // self.world_size
        for step in range(self.start_step, self.end_step):
            yield self.global_batch(step)[self.rank * share:(self.rank + 1) * share]

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def state_dict(self) -> dict:
        """Everything the stream depends on (the step lives in the trainer's checkpoint)."""
        return {"seed": self.seed, "batch_size": self.batch_size, "balanced": self.balanced, "n": self.n}
