"""Contrastive losses: SimCLR's NT-Xent and supervised contrastive (SupCon, Khosla et al. 2020).

Both take the projections of two augmented views of the same N images, ``z1`` and ``z2``
[N, D] (any scale; they are L2-normalised here, in float32). The 2N views form one batch; every
view is an anchor, and the loss is the mean over the 2N anchors. The target indices are built
from the actual batch size on every call, so a last partial batch is handled (DERMA's NT-Xent
prebuilt its labels for a fixed batch size and broke on the last batch; PROTOCOLS.md §8.2).

NT-Xent (Chen et al. 2020), anchor i with positive p(i) (its other view):
    l_i = -log( exp(s_i,p(i) / t) / sum_{k != i} exp(s_ik / t) ),   s = cosine similarity.
SupCon, L^sup_out (Khosla et al. 2020, eq. 2), positives P(i) = other views with i's label:
    l_i = -1/|P(i)| sum_{p in P(i)} log( exp(s_ip / t) / sum_{a != i} exp(s_ia / t) ).
With every label unique, P(i) = {p(i)} and SupCon equals NT-Xent exactly. (The reference code's
extra factor t / base_t = t / 0.07 is left out: it only rescales the gradient.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _similarities(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """[N, D] x 2 -> logits [2N, 2N] (cosine / t) with -inf on the diagonal."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be [N, D], got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    return logits.masked_fill(eye, float("-inf"))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy; view i of ``z1`` is the positive of view i of ``z2``.

    Args:
        z1, z2: projections [N, D] of the two views (N >= 1).
    Returns:
        scalar mean loss over the 2N anchors (0 when N == 1: no negatives).
    """
    n = len(z1)
    logits = _similarities(z1, z2, temperature)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(logits.device)
    return F.cross_entropy(logits, targets)


def supcon(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss L^sup_out over the 2N views of N labelled images.

    Args:
        z1, z2: projections [N, D] of the two views; labels: int [N].
    Returns:
        scalar mean loss over the 2N anchors.
    """
    if labels.shape != (len(z1),):
        raise ValueError(f"labels must be [N={len(z1)}], got {tuple(labels.shape)}")
    logits = _similarities(z1, z2, temperature)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    both = torch.cat([labels, labels]).to(logits.device)
    positive = both[:, None] == both[None, :]
    positive.fill_diagonal_(False)  # every anchor keeps at least its other view
    log_prob = log_prob.masked_fill(~positive, 0.0)  # also clears the -inf diagonal
    return -(log_prob.sum(1) / positive.sum(1)).mean()
