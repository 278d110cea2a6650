"""The network trained by contrastive pretraining: an Encoder (trunk + pool) plus a projection head."""
from __future__ import annotations

import torch
from torch import nn

from pretrained.encoder import Encoder


class ProjectionHead(nn.Sequential):
    """SimCLR's 2-layer MLP g(h): Linear(D, hidden) - BatchNorm1d - ReLU - Linear(hidden, out).

    [N, D] -> [N, out]. Used only for the loss; the encoder's pooled features h are what transfer.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))


class ContrastiveModel(nn.Module):
    """x [N, 3, H, W] (normalised network input) -> projections z [N, out]."""

    def __init__(self, encoder: Encoder, head: ProjectionHead):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def build_head(feature_dim: int, hidden_dim: int | None, out_dim: int, seed: int) -> ProjectionHead:
    """A projection head initialised from ``seed`` (independent of the global RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ProjectionHead(feature_dim, hidden_dim or feature_dim, out_dim)
