"""Training objectives shared by the trained evaluators (fine-tune, medmnist-v2, the linear head).

One class per image: cross-entropy on logits [B, C] and int64 targets [B], scores = softmax.
Multi-label (several binary findings per image, ``dataset.is_multilabel``): binary cross-entropy
with logits, averaged over batch and findings (``torch.nn.BCEWithLogitsLoss()``, as MedMNIST's
``train_and_eval_pytorch.py``), on logits [B, L] and float targets [B, L]; scores = sigmoid.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def training_loss(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Mean loss of ``logits`` [B, K] against ``targets`` (int64 [B], or 0/1 [B, L] when ``multilabel``)."""
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
    return F.cross_entropy(logits, targets)


def output_scores(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Class probabilities (softmax over dim 1) or per-finding probabilities (sigmoid) of ``logits`` [B, K]."""
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)


def target_tensor(targets: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """Dataset targets as a tensor: int64 [N] class indices, or float32 [N, L] for a multi-label matrix."""
    array = np.asarray(targets)
    if array.ndim == 2:
        return torch.as_tensor(array.astype(np.float32), device=device)
    return torch.as_tensor(array.astype(np.int64), device=device)
