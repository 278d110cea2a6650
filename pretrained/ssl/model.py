"""The projection head of contrastive pretraining; the trained network is ``EncoderWithHead(encoder, head)``."""
from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Sequential):
    """SimCLR's 2-layer MLP g(h): Linear(D, hidden) - BatchNorm1d - ReLU - Linear(hidden, out).

    [N, D] -> [N, out]. Used only for the loss; the encoder's pooled features h are what transfer.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))


def build_head(feature_dim: int, hidden_dim: int | None, out_dim: int, seed: int) -> ProjectionHead:
    """A projection head initialised from ``seed`` (independent of the global RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ProjectionHead(feature_dim, hidden_dim or feature_dim, out_dim)
