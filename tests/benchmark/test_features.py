from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from benchmark.features import extract_features
from benchmark.testing import tiny_encoder_spec
from datasets.base import ArrayImageDataset, FileImageDataset, UnreadableImageError
from pretrained.encoder import LoadOptions


def _dataset(seed: int = 0, n: int = 24) -> ArrayImageDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 20, 20, 3), dtype=np.uint8)
    table = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "label": np.arange(n) % 3,
                          "group": [f"g{k}" for k in range(n)]})
    return ArrayImageDataset("toy", table, ["a", "b", "c"], images)


def _encoder(seed: int = 0):
    return tiny_encoder_spec(seed=seed).build(LoadOptions())


def test_features_match_direct_forward_and_cache_hits(tmp_path):
    dataset, encoder = _dataset(), _encoder()
    first = extract_features(encoder, dataset, cache_dir=tmp_path, batch_size=7, num_workers=0)
    assert first.x.shape == (24, 16) and not first.meta["cache_hit"]
    with torch.inference_mode():
        direct = encoder.eval()(torch.stack([encoder.preprocessing(dataset.load_image(i)) for i in range(3)]))
    np.testing.assert_allclose(first.x[:3], direct.numpy(), rtol=1e-5, atol=1e-6)
    second = extract_features(encoder, dataset, cache_dir=tmp_path, num_workers=0)
    assert second.meta["cache_hit"]
    np.testing.assert_array_equal(first.x, second.x)
    assert (second.y == dataset.labels).all()


def test_changed_key_reextracts_never_stale(tmp_path):
    dataset = _dataset()
    base = extract_features(_encoder(0), dataset, cache_dir=tmp_path, num_workers=0)
    other_weights = extract_features(_encoder(1), dataset, cache_dir=tmp_path, num_workers=0)
    assert not other_weights.meta["cache_hit"] and not np.allclose(base.x, other_weights.x)
    encoder = _encoder(0)
    encoder.preprocessing = encoder.preprocessing.with_input_size(24)
    other_size = extract_features(encoder, dataset, cache_dir=tmp_path, num_workers=0)
    assert not other_size.meta["cache_hit"]
    changed = _dataset(seed=5)  # same ids and labels, different pixels
    other_pixels = extract_features(_encoder(0), changed, cache_dir=tmp_path, num_workers=0)
    assert not other_pixels.meta["cache_hit"] and not np.allclose(base.x, other_pixels.x)
    subset = extract_features(_encoder(0), dataset, indices=np.arange(5), cache_dir=tmp_path, num_workers=0)
    assert not subset.meta["cache_hit"] and len(subset) == 5
    np.testing.assert_allclose(subset.x, base.x[:5], rtol=1e-5, atol=1e-6)
    # one checkpoint file, two networks in it (MoCo's encoder_q / encoder_k): same file sha, other key prefix
    query, key = _encoder(0), _encoder(1)
    query.provenance = {**query.provenance, "weights_sha256": "f" * 64, "key_prefix": "module.encoder_q."}
    key.provenance = {**key.provenance, "weights_sha256": "f" * 64, "key_prefix": "module.encoder_k."}
    extract_features(query, dataset, cache_dir=tmp_path, num_workers=0)
    assert not extract_features(key, dataset, cache_dir=tmp_path, num_workers=0).meta["cache_hit"]


def test_corrupt_cache_file_is_ignored(tmp_path):
    dataset, encoder = _dataset(), _encoder()
    extract_features(encoder, dataset, cache_dir=tmp_path, num_workers=0)
    for path in (tmp_path / "features").rglob("*.npz"):
        path.write_bytes(b"not a numpy file")
    again = extract_features(encoder, dataset, cache_dir=tmp_path, num_workers=0)
    assert not again.meta["cache_hit"] and again.x.shape == (24, 16)


def test_select_returns_requested_rows(tmp_path):
    features = extract_features(_encoder(), _dataset(), num_workers=0)
    picked = features.select(np.array([5, 2, 9]))
    assert list(picked.ids) == ["i5", "i2", "i9"]
    np.testing.assert_array_equal(picked.x[1], features.x[2])


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\x00truncated", b"plain text"])
def test_unreadable_image_is_one_clear_error(tmp_path, content):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    table = pd.DataFrame({"image_id": ["good", "bad"], "path": [str(good), str(bad)], "label": [0, 1],
                          "group": ["a", "b"]})
    dataset = FileImageDataset("files", table, ["x", "y"], root=tmp_path)
    with pytest.raises(UnreadableImageError, match="cannot read image .*bad.png"):
        extract_features(_encoder(), dataset, num_workers=0)


def test_truncated_jpeg_detected(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:300])
    table = pd.DataFrame({"image_id": ["cut"], "path": [str(path)], "label": [0], "group": ["a"]})
    dataset = FileImageDataset("files", table, ["x"], root=tmp_path)
    with pytest.raises(UnreadableImageError, match="truncated or not an image"):
        dataset.load_image(0)


def test_depthwise_networks_stay_nchw_on_cuda():
    """channels_last except for grouped convolutions on CUDA (cuDNN's first-shape cost there, docs/speed.md)."""
    from torch import nn

    from benchmark.device import conv_memory_format
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    depthwise = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert conv_memory_format(plain, cuda) == torch.channels_last
    assert conv_memory_format(depthwise, cuda) == torch.contiguous_format
    assert conv_memory_format(depthwise, cpu) == torch.channels_last  # the CPU paths are unchanged
    from pretrained.efficientnet_lite import VARIANTS, build_lite_model
    trunk, _ = build_lite_model(VARIANTS["lite0"])  # random init: no wheel needed
    assert conv_memory_format(trunk, cuda) == torch.contiguous_format


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_an_encoder_moved_to_the_gpu_by_extraction_can_still_be_trained():
    # the run keeps built encoders across cells: one moved inside inference mode would hold inference
    # tensors, and a later saliency or fine-tuning cell on it would fail ("requires_grad ... inference tensor")
    encoder = _encoder()
    extract_features(encoder, _dataset(), device=torch.device("cuda"), num_workers=0)
    parameters = list(encoder.parameters())
    assert parameters[0].is_cuda and not any(p.is_inference() for p in parameters)
    for p in parameters:
        p.requires_grad_(True)
    x = torch.rand(2, 3, 20, 20, device="cuda")
    encoder.train()(encoder.preprocessing.normalize(x)).sum().backward()
    assert parameters[0].grad is not None
