"""DDP plumbing for pretraining under ``torchrun``: process-group setup and a gradient-carrying gather.

Every rank computes the loss over the gathered global batch. The gather's backward sums the
incoming gradients over ranks (an all-reduce), so each rank's local
projections receive world_size x dL/dz; DDP then averages parameter gradients over ranks, which
gives exactly dL/dtheta of the global loss: the same step as one process with the whole batch.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from benchmark import distributed as harness_distributed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env(device: torch.device) -> tuple[torch.device, DistContext]:
    """Join the torchrun process group (``WORLD_SIZE`` > 1) with the harness's own setup
    (:func:`benchmark.distributed.init_from_env`: NCCL on ``cuda:LOCAL_RANK`` or gloo); returns this
    rank's device and context. A no-op outside torchrun."""
    device = harness_distributed.init_from_env(device)
    return device, current()


def current() -> DistContext:
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def barrier(context: DistContext) -> None:
    if context.enabled:
        dist.barrier()


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's piece (the adjoint of the gather).

    Written here because ``torch.distributed.nn.functional.all_gather`` is deprecated from torch 2.14 on."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # [n, ...] -> [world, n, ...]
        pieces = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(pieces, tensor.contiguous())
        ctx.rank = dist.get_rank()
        return torch.stack(pieces)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # each rank's loss depends on every piece: sum their gradients
        return grad[ctx.rank]


def gather_with_grad(tensor: torch.Tensor, context: DistContext, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate every rank's [n_r, ...] tensor in rank order (n_r may differ); gradients flow back.

    ``sizes`` (every rank's n_r) saves a collective when the caller knows them (the trainer does)."""
    if not context.enabled:
        return tensor
    if sizes is None:
        sizes = _gather_sizes(len(tensor), tensor.device, context)
    pieces = _AllGatherWithGrad.apply(_pad_to(tensor, max(sizes)))
    return torch.cat([piece[:size] for piece, size in zip(pieces, sizes)])


def _gather_sizes(size: int, device: torch.device, context: DistContext) -> list[int]:
    local = torch.tensor([size], device=device, dtype=torch.long)
    sizes = [torch.empty_like(local) for _ in range(context.world_size)]
    dist.all_gather(sizes, local)
    return [int(s.item()) for s in sizes]


def _pad_to(tensor: torch.Tensor, size: int) -> torch.Tensor:
    if len(tensor) == size:
        return tensor.contiguous()
    pad = tensor.new_zeros((size - len(tensor), *tensor.shape[1:]))
    return torch.cat([tensor, pad])
