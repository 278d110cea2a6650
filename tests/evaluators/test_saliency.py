"""Saliency: occlusion known answers, captum vs a hand-written loop, class saliency, scores, evaluator."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

from evaluators.saliency import load_head
from evaluators.saliency_methods import (MissingDependencyError, attentive_diffusion, box_share, box_to_input,
                                         class_saliency, occlusion_map, windows_per_image)
from pretrained.preprocessing import Preprocessing
from tests.probe_helpers import make_encoder, registered_array_dataset, run_cell, one_thread

single_thread = pytest.fixture(autouse=True)(one_thread)


def _image(size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(3, size, size, generator=torch.Generator().manual_seed(seed))


def test_top_half_encoder_has_zero_saliency_on_the_bottom_half():
    encoder = make_encoder("top-half")
    x = _image(32)
    tiled = occlusion_map(encoder, x, window=4, stride=4, perturbations_per_eval=16)  # no window straddles row 16
    assert tiled.shape == (32, 32)
    assert torch.count_nonzero(tiled[16:]) == 0
    assert (tiled[:16] > 0).float().mean() > 0.9
    sliding = occlusion_map(encoder, x, window=4, stride=2, perturbations_per_eval=7)
    assert torch.count_nonzero(sliding[16 + 4 - 1:]) == 0  # rows no top-touching window covers
    assert (sliding[:16] > 0).all()


def test_captum_occlusion_equals_the_seed_loop():
    """ANTON: sum ||f(x) - f(x_occ)|| / ||f(x)|| over covering windows, divided by the cover count."""
    encoder = make_encoder("plain")
    x, window, stride = _image(16, seed=1), 4, 2
    with torch.no_grad():
        reference = encoder(x[None])[0]
        total, count = torch.zeros(16, 16), torch.zeros(16, 16)
        for top in range(0, 16 - window + 1, stride):
            for left in range(0, 16 - window + 1, stride):
                occluded = x.clone()
                occluded[:, top:top + window, left:left + window] = 0.0
                score = torch.linalg.vector_norm(encoder(occluded[None])[0] - reference) / torch.linalg.vector_norm(reference)
                total[top:top + window, left:left + window] += score
                count[top:top + window, left:left + window] += 1
    expected = total / count
    result = occlusion_map(encoder, x, window, stride, perturbations_per_eval=5)
    torch.testing.assert_close(result, expected, rtol=1e-4, atol=1e-6)
    assert windows_per_image(16, window, stride) == 49
    assert windows_per_image(242, 10, 1) == 233 ** 2  # parity cost


def test_attentive_diffusion_known_values():
    one_hot = torch.zeros(1, 10, 10)
    one_hot[0, 3, 4] = 1.0
    half = torch.zeros(1, 10, 10)
    half[0, :5] = 1.0
    assert attentive_diffusion(one_hot)[0] == pytest.approx(1.0)  # percent
    assert attentive_diffusion(half)[0] == pytest.approx(50.0)
    assert attentive_diffusion(torch.ones(1, 10, 10))[0] == 0.0


def test_box_mapping_and_share():
    pre = Preprocessing(input_size=128, resize_size=128)
    # a 200 x 150 image resizes to 170 x 128 and loses 21 px left (round(42 / 2)) in the centre crop
    assert box_to_input((0, 0, 200, 150), (200, 150), pre) == (0.0, 0.0, 128.0, 128.0)
    x0, y0, x1, y1 = box_to_input((50, 30, 150, 120), (200, 150), pre)
    sx, sy = 170 / 200, 128 / 150  # torchvision: long side int(128 * 200 / 150) = 170
    assert (x0, y0, x1, y1) == pytest.approx((50 * sx - 21, 30 * sy, 150 * sx - 21, 120 * sy))
    squash = Preprocessing(input_size=64, resize_size=None)
    assert box_to_input((50, 30, 150, 120), (200, 150), squash) == pytest.approx((16.0, 12.8, 48.0, 51.2))
    saliency = torch.zeros(8, 8)
    saliency[:4, :4] = 2.0
    assert box_share(saliency, (0, 0, 4, 4)) == (1.0, 0.25)
    assert box_share(torch.ones(8, 8), (0, 0, 4, 8)) == (0.5, 0.5)


def test_class_saliency_methods_with_a_small_head():
    encoder = make_encoder("top-half")
    head = nn.Linear(16, 3)
    torch.manual_seed(0)
    nn.init.normal_(head.weight)
    x = torch.stack([_image(32, 2), _image(32, 3)])
    targets = torch.tensor([0, 2])
    ig = class_saliency(encoder, head, x, targets, "integrated-gradients", ig_steps=16)
    assert ig.shape == (2, 32, 32) and (ig >= 0).all()
    assert torch.count_nonzero(ig[:, 16:]) == 0 and ig[:, :16].sum() > 0  # no gradient reaches the unseen half
    cam = class_saliency(encoder, head, x, targets, "grad-cam")
    assert cam.shape == (2, 32, 32) and (cam >= 0).all()
    assert not any(p.grad is not None for p in encoder.parameters())  # captum uses autograd.grad only
    with pytest.raises(ValueError, match="unknown class saliency"):
        class_saliency(encoder, head, x, targets, "lime")


def test_integrated_gradients_completeness():
    """IG attributions sum to logit(x) - logit(baseline 0) (up to the Riemann error)."""
    from captum.attr import IntegratedGradients
    encoder = make_encoder("plain")
    head = nn.Linear(16, 2)
    model = nn.Sequential(encoder, head).eval()
    x = _image(32, 4)[None]
    attributions = IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=1, n_steps=64)
    with torch.no_grad():
        gap = (model(x)[0, 1] - model(torch.zeros_like(x))[0, 1]).item()
    assert attributions.sum().item() == pytest.approx(gap, rel=0.05, abs=1e-3)


def test_missing_captum_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(MissingDependencyError, match="pip install captum"):
        occlusion_map(make_encoder(), _image(16), 4, 4)


def test_missing_captum_dependency_is_named(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "captum.attr":
            raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(MissingDependencyError, match="install 'matplotlib' \\(a captum dependency\\)"):
        occlusion_map(make_encoder(), _image(16), 4, 4)


def test_load_head_checks_shapes(tmp_path):
    encoder = make_encoder()
    path = tmp_path / "head.pt"
    torch.save({"weight": torch.zeros(2, 16), "bias": torch.zeros(2)}, path)
    head = load_head(str(path), encoder, 16, 2)
    assert head.weight.shape == (2, 16)
    torch.save({"weight": torch.zeros(3, 16), "bias": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="do not match"):
        load_head(str(path), encoder, 16, 2)
    with pytest.raises(ValueError, match="does not exist"):
        load_head(str(tmp_path / "missing.pt"), encoder, 16, 2)


@pytest.fixture
def boxed_dataset():
    yield from registered_array_dataset("boxed-array", n=40, boxed=True)


def test_saliency_evaluator_with_boxes_and_class_maps(results_dir, tiny_encoder, boxed_dataset):
    options = {"num_images": 3, "window": 8, "stride": 4, "class_methods": ["integrated-gradients", "grad-cam"],
               "ig_steps": 8, "head_wd_steps": 3}
    outcome = run_cell(results_dir, "tiny-cnn", "boxed-array", "saliency", options)
    record = json.loads(outcome.path.read_text())
    metrics = record["metrics"]
    assert record["primary_metric"] == "attentive_diffusion"
    assert metrics["attentive_diffusion"]["n"] == 3 and 0 < metrics["attentive_diffusion"]["value"] < 100
    for name in ("ig_attentive_diffusion", "gradcam_attentive_diffusion", "lesion_saliency_share",
                 "ig_lesion_saliency_share", "gradcam_lesion_saliency_share"):
        assert name in metrics
    # the box is the top-left quarter of the image; with margin 7 the map is the centre 32 of a 46 px input
    resolved = record["protocol"]["resolved"]
    facts = record["extra"]["encoder_facts"]
    assert facts["occlusion_input_size"] == 32 + 2 * 7 and facts["map_size"] == 32
    area = (23 - 7) ** 2 / 32 ** 2
    assert metrics["lesion_area_share"]["value"] == pytest.approx(area)
    assert resolved["head"] == "linear probe on train features" and facts["head"]["C"] > 0
    grid, maps = record["extra"]["figures"]
    assert open(grid, "rb").read(4) == b"\x89PNG"
    with np.load(maps) as saved:
        assert saved["occlusion"].shape == (3, 32, 32) and saved["integrated_gradients"].shape == (3, 32, 32)
        assert list(saved["image_ids"]) == resolved["image_ids"]


class _Tokens(nn.Module):
    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.inner = trunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).flatten(2).transpose(1, 2)  # [N, tokens, C], as a ViT trunk


class _TokenMean(nn.Module):
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(1)


def test_grad_cam_refuses_token_trunks():
    encoder = make_encoder("plain")
    encoder.trunk, encoder.pool = _Tokens(encoder.trunk), _TokenMean()
    head = nn.Linear(16, 2)
    with pytest.raises(ValueError, match="use integrated-gradients"):
        class_saliency(encoder, head, _image(32)[None], torch.tensor([0]), "grad-cam")
    assert class_saliency(encoder, head, _image(32)[None], torch.tensor([0]), "integrated-gradients", ig_steps=4).shape == (1, 32, 32)
