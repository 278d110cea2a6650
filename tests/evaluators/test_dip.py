"""Deep image prior: generator shapes, decreasing reconstruction error, image-quality references, evaluator."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evaluators.dip import invert_features
from evaluators.dip_generator import SkipGenerator, noise_side
from evaluators.image_quality import LPIPSScorer, lpips_unavailable_reason, psnr, ssim
from evaluators.probe_common import frozen
from pretrained.preprocessing import Preprocessing
from tests.probe_helpers import make_encoder, registered_array_dataset, run_cell, smooth_images, one_thread

single_thread = pytest.fixture(autouse=True)(one_thread)


def test_generator_shapes_and_noise_side():
    assert noise_side(224) == 256 and noise_side(128) == 128 and noise_side(32) == 128 and noise_side(129) == 192
    generator = SkipGenerator()
    out = generator(torch.rand(1, 32, 128, 128))
    assert out.shape == (1, 3, 128, 128)
    assert sum(p.numel() for p in generator.parameters()) > 1e5  # six scales, up to 128 channels


SMALL = {"in_channels": 8, "channels": [8, 16, 16], "skip": [2, 2, 2], "filters": [3, 3, 3]}


def test_reconstruction_error_decreases():
    encoder = make_encoder("plain")
    image = torch.from_numpy(smooth_images(1, 32, seed=5)[0]).permute(2, 0, 1).float() / 255
    with frozen(encoder):
        inversion = invert_features(encoder, image, iterations=40, lr=1e-2, seed=0, log_every=10, generator=SMALL)
    losses = [loss for _, loss in inversion.curve]
    assert [step for step, _ in inversion.curve] == [0, 10, 20, 30, 40]
    assert losses[-1] < 0.5 * losses[0]
    assert losses[-1] < losses[1]
    assert inversion.image.shape == (3, 32, 32) and 0 <= inversion.image.min() and inversion.image.max() <= 1
    with frozen(encoder):  # seeded: the same run gives the same reconstruction
        again = invert_features(encoder, image, iterations=3, lr=1e-2, seed=0, generator=SMALL)
        twice = invert_features(encoder, image, iterations=3, lr=1e-2, seed=0, generator=SMALL)
    assert torch.equal(again.image, twice.image)


def test_histogram_normalised_encoders_need_raw_input():
    encoder = make_encoder("plain", preprocessing=Preprocessing(input_size=32, resize_size=32, mean=None, std=None,
                                                               histogram_normalize=True))
    with pytest.raises(ValueError, match="normalize_input=false"):
        invert_features(encoder, torch.rand(3, 32, 32), iterations=1)


def test_ssim_matches_skimage():
    structural_similarity = pytest.importorskip(
        "skimage.metrics", reason="scikit-image (requirements-dev.txt) is the SSIM reference").structural_similarity
    rng = np.random.default_rng(0)
    a = smooth_images(1, 48, seed=1)[0].astype(np.float64) / 255
    for b in (np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1), smooth_images(1, 48, seed=2)[0] / 255.0, a):
        expected = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False, channel_axis=-1)
        got = ssim(torch.from_numpy(b).permute(2, 0, 1), torch.from_numpy(a).permute(2, 0, 1)).item()
        assert got == pytest.approx(expected, abs=1e-10)
    batch = ssim(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16))
    assert batch.shape == (2,)
    with pytest.raises(ValueError, match="smaller than"):
        ssim(torch.rand(3, 8, 8), torch.rand(3, 8, 8))


def test_psnr_known_value():
    a = torch.zeros(1, 3, 4, 4)
    assert psnr(a, a + 0.1).item() == pytest.approx(20.0)


def test_lpips_is_reported_unavailable_not_faked():
    reason = lpips_unavailable_reason("alex")
    scorer = LPIPSScorer(["alex"], torch.device("cpu"))
    if reason is None:  # a machine with lpips and its backbone weights
        assert "alex" in scorer.models
    else:
        assert scorer.models == {} and scorer.notes["alex"] == f"lpips_alex: unavailable ({reason})"
        assert scorer(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)) == {}
    assert "unknown LPIPS backbone" in lpips_unavailable_reason("resnet")


@pytest.fixture
def dip_dataset():
    yield from registered_array_dataset("dip-array", n=40)


def test_dip_evaluator(results_dir, tiny_encoder, dip_dataset):
    small = {"input_channels": 8, "generator_channels": [8, 16, 16], "generator_skip": [2, 2, 2],
             "generator_filters": [3, 3, 3]}
    outcome = run_cell(results_dir, "tiny-cnn", "dip-array", "dip",
                       {"iterations": 12, "num_images": 2, "log_every": 4, "lr": 1e-2, **small})
    record = json.loads(outcome.path.read_text())
    metrics = record["metrics"]
    assert record["primary_metric"] == "ssim"
    assert metrics["ssim"]["n"] == 2 and -1 <= metrics["ssim"]["value"] <= 1 and metrics["ssim"]["ci"] is not None
    assert metrics["psnr"]["n"] == 2
    assert metrics["feature_loss"]["value"] < metrics["feature_loss_initial"]["value"]
    resolved = record["protocol"]["resolved"]
    facts = record["extra"]["encoder_facts"]
    assert resolved["iterations"] == 12 and facts["noise_side"] == 32 and facts["feature_map_shape"] == [16, 8, 8]
    if lpips_unavailable_reason("alex") is not None:
        assert "lpips_alex" not in metrics
        assert any(note.startswith("lpips_alex: unavailable (") for note in record["extra"]["notes"])
    figures = record["extra"]["figures"]
    assert len(figures) == 3 and all(open(f, "rb").read(4) == b"\x89PNG" for f in figures)
    assert set(record["extra"]["loss_curves"]) == set(resolved["image_ids"])
