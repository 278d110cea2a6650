"""Batch plans (last partial batch, balanced draws, DDP shards), decoding and the batched SimCLR views."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pretrained.ssl.augment import AugmentConfig, simclr_view
from pretrained.ssl.data import batch_plan, decode_images, epoch_order, rank_shards

IDENTITY = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=0.0,
                         grayscale_p=0.0, blur_p=0.0)


def test_batch_plan_keeps_the_last_partial_batch():
    sizes = [len(b) for b in batch_plan(np.arange(10), 4)]
    assert sizes == [4, 4, 2]
    # a tail below the minimum (one image cannot form a negative pair) joins the batch before it
    plan = batch_plan(np.arange(10), 3, min_batch=2)
    assert [len(b) for b in plan] == [3, 3, 4]
    assert sorted(np.concatenate(plan).tolist()) == list(range(10))
    with pytest.raises(ValueError, match="minimum"):
        batch_plan(np.arange(10), 1)


def test_rank_shards_cover_a_batch_in_order():
    shards = rank_shards(11, 3)
    assert np.concatenate(shards).tolist() == list(range(11))
    assert [len(s) for s in shards] == [4, 4, 3]


def test_epoch_order_is_seeded_and_balanced_draws_equalise_classes():
    assert epoch_order(50, 3, 0).tolist() == epoch_order(50, 3, 0).tolist()
    assert epoch_order(50, 3, 0).tolist() != epoch_order(50, 4, 0).tolist()
    assert sorted(epoch_order(50, 3, 0).tolist()) == list(range(50))
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    drawn = labels[epoch_order(len(labels), 0, 0, labels)]
    shares = np.bincount(drawn, minlength=3) / len(drawn)
    assert np.allclose(shares, 1 / 3, atol=0.05)


def test_identity_view_returns_the_image_and_flip_flips():
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    unit = images.float() / 255
    same = simclr_view(images, 16, IDENTITY, torch.Generator().manual_seed(0))
    assert torch.allclose(same, unit, atol=1e-5)
    flipped = simclr_view(images, 16, AugmentConfig(**{**IDENTITY.__dict__, "hflip_p": 1.0}), torch.Generator().manual_seed(0))
    assert torch.allclose(flipped, unit.flip(-1), atol=1e-5)


def test_views_are_in_range_reproducible_and_differ_between_draws():
    images = torch.randint(0, 256, (4, 3, 20, 20), dtype=torch.uint8)
    config = AugmentConfig(jitter_p=1.0, jitter_strength=1.0, grayscale_p=0.5, blur_p=0.5)
    a = simclr_view(images, 12, config, torch.Generator().manual_seed(1))
    b = simclr_view(images, 12, config, torch.Generator().manual_seed(1))
    c = simclr_view(images, 12, config, torch.Generator().manual_seed(2))
    assert a.shape == (4, 3, 12, 12)
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_decode_images_frames_like_evaluation_and_caches(mini_synthderm, tmp_path):
    from datasets.registry import DATASETS
    dataset = DATASETS.get("synthderm-mini").build(None, {})
    rows = np.array([0, 5, 7])
    images = decode_images(dataset, rows, 24, cache_dir=tmp_path)
    assert images.shape == (3, 3, 24, 24) and images.dtype == torch.uint8
    assert len(list((tmp_path / "ssl-images").glob("*.npy"))) == 1
    assert torch.equal(decode_images(dataset, rows, 24, cache_dir=tmp_path), images)
    grey = decode_images(dataset, rows, 24, grayscale=True)
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
