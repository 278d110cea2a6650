"""Helpers shared by the probes (invariance, saliency, deep image prior)."""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import numpy as np

from benchmark.device import default_workers
from datasets.base import DatasetError
from evaluators.base import EvalContext
from pretrained.encoder import Encoder

log = logging.getLogger(__name__)

PROBE_SPLITS = ("train", "val", "test", "all")


def split_rows(context: EvalContext, split: str) -> np.ndarray:
    """Dataset rows of ``split`` ("all" = every image)."""
    if split not in PROBE_SPLITS:
        raise ValueError(f"split must be one of {PROBE_SPLITS}, got {split!r}")
    if split == "all":
        return np.arange(len(context.dataset))
    return context.indices(split)


def sample_rows(context: EvalContext, split: str, n: int | None, seed: int) -> np.ndarray:
    """Up to ``n`` rows of ``split`` drawn without replacement (seeded), sorted; all rows when ``n`` is None."""
    rows = split_rows(context, split)
    if len(rows) == 0:
        raise DatasetError(f"dataset '{context.dataset.name}': the '{split}' split is empty")
    if n is None or n >= len(rows):
        if n is not None and n > len(rows):
            log.warning("asked for %d images but split '%s' has %d; using all", n, split, len(rows))
        return np.sort(rows)
    if n < 1:
        raise ValueError(f"number of images must be >= 1, got {n}")
    return np.sort(np.random.default_rng(seed).choice(rows, size=n, replace=False))


@contextlib.contextmanager
def frozen(encoder: Encoder) -> Iterator[Encoder]:
    """Eval mode and no parameter gradients for the duration; both restored afterwards."""
    was_training = encoder.training
    flags = [p.requires_grad for p in encoder.parameters()]
    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    try:
        yield encoder
    finally:
        for p, flag in zip(encoder.parameters(), flags):
            p.requires_grad_(flag)
        encoder.train(was_training)


def loader_workers(context: EvalContext, n_items: int, min_items_per_worker: int = 8) -> int:
    """DataLoader workers for ``n_items`` items: the run's setting, none for small jobs."""
    workers = context.extraction.num_workers
    workers = default_workers() if workers is None else workers
    return 0 if n_items < min_items_per_worker * 2 else min(workers, n_items // min_items_per_worker)

