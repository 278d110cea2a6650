"""Distances between an image and its reconstruction: SSIM and PSNR (torch), LPIPS when available.

SSIM is Wang et al. (2004) with the standard 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03,
population (co)variances, computed per channel over the "valid" region (no padding) and averaged
over channels and pixels; it equals ``skimage.metrics.structural_similarity(a, b, data_range=1,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=-1)``.

LPIPS (Zhang et al. 2018; ANTON ``perceptual_distance.py``: alex, vgg, squeeze at 224 in [-1, 1]) is
computed only when the ``lpips`` package imports *and* the ImageNet weights of its backbone are on
disk (torch hub cache): it is never downloaded implicitly, and never faked.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

LPIPS_BACKBONE_WEIGHTS = {"alex": ("AlexNet_Weights", "IMAGENET1K_V1"), "vgg": ("VGG16_Weights", "IMAGENET1K_V1"),
                          "squeeze": ("SqueezeNet1_1_Weights", "IMAGENET1K_V1")}


def _gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Mean SSIM of image pairs.

    Args:
        a, b: [N, C, H, W] or [C, H, W] in the same range (H, W >= ``window``).
    Returns:
        [N] (or a scalar for 3-D input), float64.
    """
    single = a.dim() == 3
    a, b = (t.unsqueeze(0) if single else t for t in (a, b))
    if a.shape != b.shape:
        raise ValueError(f"ssim needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(a.shape[-2:]) < window:
        raise ValueError(f"images of {tuple(a.shape[-2:])} are smaller than the {window}x{window} SSIM window")
    a, b = a.to(torch.float64), b.to(torch.float64)
    channels = a.shape[1]
    kernel = _gaussian_window(window, sigma).to(a.device).expand(channels, 1, window, window)
    filt = lambda x: F.conv2d(x, kernel, groups=channels)
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a ** 2
    var_b = filt(b * b) - mu_b ** 2
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    out = s.mean(dim=(1, 2, 3))
    return out[0] if single else out


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of [N, C, H, W] pairs -> [N] (inf for identical images)."""
    mse = ((a.to(torch.float64) - b.to(torch.float64)) ** 2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range ** 2 / mse)


def lpips_backbone_file(net: str) -> Path:
    """Where torchvision keeps the ImageNet weights LPIPS's ``net`` backbone loads."""
    import torchvision
    enum_name, member = LPIPS_BACKBONE_WEIGHTS[net]
    url = getattr(getattr(torchvision.models, enum_name), member).url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def lpips_unavailable_reason(net: str) -> str | None:
    """None when LPIPS with backbone ``net`` can run offline, else why not."""
    if net not in LPIPS_BACKBONE_WEIGHTS:
        return f"unknown LPIPS backbone '{net}' (choose from {sorted(LPIPS_BACKBONE_WEIGHTS)})"
    if importlib.util.find_spec("lpips") is None:
        return "the lpips package is not installed (pip install lpips)"
    weights = lpips_backbone_file(net)
    if not weights.is_file():
        return f"the ImageNet weights of its {net} backbone are not at {weights}"
    return None


class LPIPSScorer:
    """LPIPS models built once and reused across image pairs (ANTON rebuilt three nets per pair)."""

    def __init__(self, nets: list[str], device: torch.device):
        self.models, self.notes = {}, {}
        for net in nets:
            reason = lpips_unavailable_reason(net)
            if reason is None:
                try:
                    import lpips
                    self.models[net] = lpips.LPIPS(net=net, verbose=False).eval().to(device)
                except Exception as error:  # a broken install or weights file: report, do not fake
                    reason = f"loading failed: {type(error).__name__}: {error}"
            if reason is not None:
                self.notes[net] = f"lpips_{net}: unavailable ({reason})"
                log.info(self.notes[net])
        self.device = device

    @torch.no_grad()
    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
        """[N, 3, H, W] in [0, 1] -> {net: [N]} (inputs scaled to [-1, 1])."""
        a, b = a.to(self.device) * 2 - 1, b.to(self.device) * 2 - 1
        return {net: model(a, b).flatten().double().cpu() for net, model in self.models.items()}

