"""DDP: two gloo ranks with unequal shares of a batch compute the same loss and gradient as one process."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pretrained.ssl.data import rank_shards
from pretrained.ssl.distributed import DistContext, gather_with_grad
from pretrained.ssl.losses import nt_xent, supcon

N = 5  # global batch: rank 0 gets 3 images, rank 1 gets 2


def _batch():
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(N, 4, generator=generator), torch.randn(N, 4, generator=generator),
            torch.tensor([0, 1, 0, 2, 1]))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 3)


def _loss(z1, z2, labels, method):
    return nt_xent(z1, z2, 0.5) if method == "simclr" else supcon(z1, z2, labels, 0.5)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank: its share of the batch (as the trainer cuts it), gathered for the loss over the global batch."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        context = DistContext(rank, world)
        results = {}
        for method in ("simclr", "supcon"):
            model = nn.parallel.DistributedDataParallel(_model())
            x1, x2, labels = _batch()
            shards = rank_shards(N, world)
            share = torch.as_tensor(shards[rank])
            z1, z2 = model(torch.cat([x1[share], x2[share]])).chunk(2)
            # sizes gathered by collective for z1, passed in for z2 (as the trainer does): both must agree
            z1, z2 = gather_with_grad(z1, context), gather_with_grad(z2, context, [len(s) for s in shards])
            loss = _loss(z1, z2, labels, method)  # every rank holds the global batch's labels, as in the trainer
            loss.backward()
            results[method] = {"loss": loss.detach(), "grad": model.module.weight.grad}
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path):
    out = str(tmp_path / "rank")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    for method in ("simclr", "supcon"):
        x1, x2, labels = _batch()
        model = _model()
        z1, z2 = model(torch.cat([x1, x2])).chunk(2)
        loss = _loss(z1, z2, labels, method)
        loss.backward()
        for rank in range(2):
            got = torch.load(f"{out}.{rank}")[method]
            assert torch.allclose(got["loss"], loss.detach(), atol=1e-6), (method, rank)
            assert torch.allclose(got["grad"], model.weight.grad, atol=1e-6), (method, rank)
