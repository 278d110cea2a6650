"""Running under ``torchrun``: process-group setup, rank queries and the collectives the harness needs.

``torchrun --nproc_per_node N cli.py <command> ...`` starts N copies of the CLI with ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` set. :func:`init_from_env` (called once by the CLI when it resolves the
device) joins the process group: NCCL on CUDA, gloo on CPU, one GPU per local rank. Outside
torchrun (``WORLD_SIZE`` unset or 1) every function here is a cheap no-op, so library code calls
them unconditionally.

Conventions: only rank 0 writes files (records, checkpoints, the feature cache); work that is
sharded over ranks uses *strided* shards (rank ``r`` takes positions ``r, r + W, r + 2W, ...``)
and :func:`gather_strided` puts the pieces back in the original order on every rank.
"""
from __future__ import annotations

import atexit
import logging
import os
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

_DEFAULT_TIMEOUT = timedelta(minutes=30)


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """True on rank 0 (and always outside torchrun): the only process that writes files."""
    return rank() == 0


def init_from_env(device: torch.device) -> torch.device:
    """Join the torchrun process group when ``WORLD_SIZE > 1``; return this rank's device.

    CUDA: NCCL, device ``cuda:LOCAL_RANK`` (an explicit ``cuda:N`` cannot be combined with
    several processes on one node). CPU: gloo. Idempotent; destroys the group at exit.
    """
    if env_world_size() <= 1:
        return device
    if device.type == "cuda":
        if device.index not in (None, local_rank()) and torch.cuda.device_count() > 1:
            raise ValueError(f"--device {device} cannot be used under torchrun with several processes; "
                             f"use --device cuda (each process takes cuda:LOCAL_RANK)")
        if local_rank() >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank()} but only {torch.cuda.device_count()} CUDA device(s) visible; "
                             f"use --nproc_per_node <= {torch.cuda.device_count()}")
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # naming this rank's GPU spares NCCL from guessing the rank -> GPU map (and its warning)
        dist.init_process_group(backend=backend, timeout=_DEFAULT_TIMEOUT,
                                **({"device_id": device} if device.type == "cuda" else {}))
        atexit.register(shutdown)
        log.info("joined process group: rank %d of %d (%s, %s)", rank(), world_size(), backend, device)
    return device


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def _collective_device() -> torch.device:
    """Tensors in collectives must live on the GPU for NCCL and on the CPU for gloo."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects; small ones)."""
    if not is_initialized():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_collective_device() if dist.get_backend() == "nccl" else None)
    return box[0]


def all_agree(flag: bool) -> bool:
    """True only when ``flag`` is true on every rank (a logical AND over ranks)."""
    if not is_initialized():
        return bool(flag)
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def same_on_all_ranks(value: int) -> bool:
    """True when the integer ``value`` is identical on every rank."""
    if not is_initialized():
        return True
    t = torch.tensor([value, -value], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t[0]) == value and int(t[1]) == -value


def strided_positions(total: int, rank_: int | None = None, world: int | None = None) -> np.ndarray:
    """Positions ``rank, rank + W, ...`` below ``total`` that this rank handles."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    return np.arange(rank_, total, world, dtype=np.int64)


def gather_strided(local: torch.Tensor, total: int) -> torch.Tensor:
    """Reassemble strided shards: rank ``r``'s ``local`` [n_r, ...] holds positions ``r::W``.

    Returns the full [total, ...] tensor (on ``local``'s device) on every rank.
    """
    if not is_initialized() or world_size() == 1:
        return local
    world = world_size()
    rows = -(-total // world)  # ceil
    if local.shape[0] != len(strided_positions(total)):
        raise ValueError(f"rank {rank()} holds {local.shape[0]} rows, expected {len(strided_positions(total))}")
    device = _collective_device()
    padded = torch.zeros((rows, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local.to(device)
    pieces = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(pieces, padded)
    stacked = torch.stack(pieces, dim=1)  # [rows, W, ...]: position i * W + r
    return stacked.reshape(rows * world, *local.shape[1:])[:total].to(local.device)


def broadcast_module_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank before evaluation."""
    if not is_initialized():
        return
    for buffer in module.buffers():
        if buffer.device.type == "cpu" and dist.get_backend() == "nccl":
            moved = buffer.to(_collective_device())
            dist.broadcast(moved, src)
            buffer.copy_(moved.cpu())
        else:
            dist.broadcast(buffer, src)
