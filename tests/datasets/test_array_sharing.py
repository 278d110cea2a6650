"""In-memory image arrays reach worker processes through shared memory, not as pickled copies."""
from __future__ import annotations

import os
import pickle
from contextlib import contextmanager
from multiprocessing import context
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pandas as pd
import torch  # noqa: F401  (registers torch's shared-memory reductions on ForkingPickler)

from benchmark.workers import data_loader
from datasets.base import SHARE_BYTES, ArrayImageDataset


class _Handle:
    def __init__(self, fd: int):
        self.fd = fd

    def detach(self) -> int:
        return self.fd


class _SpawningPopen:
    """What multiprocessing's Popen offers picklers while it starts a child: fds travel beside the bytes."""

    def __init__(self):
        self.fds: list[int] = []

    def duplicate_for_child(self, fd: int) -> int:
        self.fds.append(os.dup(fd))
        return self.fds[-1]

    def DupFd(self, fd: int) -> _Handle:  # noqa: N802 (multiprocessing's name)
        return _Handle(fd)


@contextmanager
def spawning():
    popen = _SpawningPopen()
    context.set_spawning_popen(popen)
    try:
        yield popen
    finally:
        context.set_spawning_popen(None)


def _dataset(n: int = 48, size: int = 96, seed: int = 0) -> tuple[ArrayImageDataset, np.ndarray]:
    images = np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    table = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "label": np.arange(n) % 2,
                          "group": [f"g{k}" for k in range(n)]})
    return ArrayImageDataset("arr", table, ["a", "b"], images.copy()), images


def test_a_worker_gets_a_handle_and_the_same_pixels():
    dataset, images = _dataset()
    assert images.nbytes >= SHARE_BYTES
    plain = pickle.dumps(dataset)
    assert len(plain) > images.nbytes  # an ordinary pickle carries the pixels
    hash_before = dataset.content_hash()
    with spawning():
        to_worker = ForkingPickler.dumps(dataset)
        again = ForkingPickler.dumps(dataset)  # the second worker: the same shared block
    assert len(to_worker) < images.nbytes // 20 and len(again) < images.nbytes // 20
    np.testing.assert_array_equal(dataset.images, images)  # the parent now reads the shared copy: same values
    assert dataset.content_hash() == hash_before
    worker_view = pickle.loads(to_worker)
    np.testing.assert_array_equal(worker_view.images, images)
    assert np.asarray(worker_view.load_image(3)).tolist() == np.asarray(dataset.load_image(3)).tolist()
    assert len(pickle.dumps(dataset)) > images.nbytes  # outside a process start: still a full copy


def test_small_arrays_and_other_dtypes_pickle_as_before():
    small, images = _dataset(n=4, size=8)
    with spawning() as popen:
        payload = ForkingPickler.dumps(small)
    assert not popen.fds and len(payload) > images.nbytes
    np.testing.assert_array_equal(pickle.loads(payload).images, images)
    table = pd.DataFrame({"image_id": ["a", "b"], "label": [0, 1], "group": ["a", "b"]})
    wide = np.arange(2 * 512 * 512, dtype=">u4").reshape(2, 512, 512)  # big-endian: no torch tensor for it
    grey = ArrayImageDataset("be32", table, ["x", "y"], wide.copy())
    with spawning():
        payload = ForkingPickler.dumps(grey)
    np.testing.assert_array_equal(pickle.loads(payload).images, wide)


def test_worker_processes_read_the_shared_images():
    dataset, images = _dataset(n=14, size=160)  # 1.08 MB: just above the threshold
    assert images.nbytes >= SHARE_BYTES
    loader = data_loader(_Pixels(dataset), batch_size=4, num_workers=1)
    rows = torch.cat(list(loader)).numpy()
    np.testing.assert_array_equal(rows, images)


class _Pixels(torch.utils.data.Dataset):
    def __init__(self, dataset: ArrayImageDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.dataset.load_image(index)))
