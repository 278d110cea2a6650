"""SimCLR's augmentations, batched on the training device (no per-image Python work).

Input: uint8 images [B, 3, S, S] (decoded once, see :mod:`pretrained.ssl.data`). Output: float
[B, 3, size, size] in [0, 1]; the caller applies the encoder's own ``preprocessing.normalize``.
Each sample draws its own parameters from a ``torch.Generator``, so a step's views are a pure
function of (seed, epoch, step) and a resumed run reproduces an uninterrupted one.

The pipeline follows SimCLR (Chen et al. 2020, appendix A): random resized crop (area scale
``crop_scale``, aspect 3/4..4/3) + horizontal flip, colour jitter with probability 0.8
(brightness, contrast, saturation 0.8 s, hue 0.2 s for strength s), grayscale with probability
0.2, Gaussian blur with probability 0.5 (sigma 0.1..2.0 at 224 px, scaled with the image size).
Differences from torchvision's PIL versions, all deliberate for speed: the crop is sampled once
(its width and height clamped to the image instead of torchvision's 10 retries) and resampled
bilinearly with ``grid_sample``; the four jitters run in a fixed order; hue is a rotation of the
chroma plane in YIQ space rather than a shift in HSV.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

_GREY = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of the SimCLR view generator (recorded in the pretraining provenance)."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    jitter_strength: float = 0.5
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def _bernoulli(n: int, p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) < p


def random_resized_crop(images: torch.Tensor, size: int, config: AugmentConfig,
                        generator: torch.Generator) -> torch.Tensor:
    """[B, 3, S, S] float -> [B, 3, size, size]: one random crop (and maybe h-flip) per sample."""
    b, device = len(images), images.device
    area = _uniform(b, *config.crop_scale, generator, device)
    log_ratio = _uniform(b, math.log(config.crop_ratio[0]), math.log(config.crop_ratio[1]), generator, device)
    ratio = torch.exp(log_ratio)
    width = torch.sqrt(area * ratio).clamp(max=1.0)  # fractions of the image side
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    centre_x = (1 - width) * torch.rand(b, generator=generator, device=device) + width / 2
    centre_y = (1 - height) * torch.rand(b, generator=generator, device=device) + height / 2
    flip = torch.where(_bernoulli(b, config.hflip_p, generator, device), -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0] = width * flip
    theta[:, 0, 2] = 2 * centre_x - 1
    theta[:, 1, 1] = height
    theta[:, 1, 2] = 2 * centre_y - 1
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="border", align_corners=False)


def _grey(images: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(_GREY, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def colour_jitter(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation, hue with probability ``jitter_p`` per sample; [B, 3, H, W] in [0, 1]."""
    b, device, s = len(images), images.device, config.jitter_strength
    apply = _bernoulli(b, config.jitter_p, generator, device).view(b, 1, 1, 1)
    strength = 0.8 * s

    def factor() -> torch.Tensor:
        return _uniform(b, max(0.0, 1 - strength), 1 + strength, generator, device).view(b, 1, 1, 1)

    out = (images * factor()).clamp(0, 1)
    mean = _grey(out).mean(dim=(2, 3), keepdim=True)
    out = (mean + factor() * (out - mean)).clamp(0, 1)
    grey = _grey(out)
    out = (grey + factor() * (out - grey)).clamp(0, 1)
    angle = _uniform(b, -0.2 * s, 0.2 * s, generator, device) * 2 * math.pi
    out = _rotate_hue(out, angle).clamp(0, 1)
    return torch.where(apply, out, images)


def _rotate_hue(images: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate the I/Q chroma plane by ``angle`` [B] radians (a hue shift that keeps luma)."""
    to_yiq = _RGB_TO_YIQ.to(images.device, images.dtype)
    from_yiq = torch.linalg.inv(to_yiq)
    cos, sin = torch.cos(angle).to(images.dtype), torch.sin(angle).to(images.dtype)
    rotation = torch.zeros(len(images), 3, 3, device=images.device, dtype=images.dtype)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    matrix = from_yiq @ rotation @ to_yiq  # [B, 3, 3]
    return torch.einsum("bij,bjhw->bihw", matrix, images)


def random_grayscale(images: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    apply = _bernoulli(len(images), p, generator, images.device).view(-1, 1, 1, 1)
    return torch.where(apply, _grey(images).expand_as(images), images)


def gaussian_blur(images: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Per-sample Gaussian blur, sigma ~ U(0.1, 2.0) * size / 224, kernel ~10 % of the side (odd)."""
    b, _, h, w = images.shape
    device = images.device
    apply = _bernoulli(b, p, generator, device)
    sigma = _uniform(b, 0.1, 2.0, generator, device) * (h / 224)
    radius = max(1, int(round(0.05 * h)))
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=images.dtype)
    kernel = torch.exp(-offsets[None, :] ** 2 / (2 * sigma[:, None].to(images.dtype) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # [B, K]
    kernel = kernel.repeat_interleave(3, dim=0)  # one kernel per (sample, channel)
    flat = images.reshape(1, b * 3, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel.view(b * 3, 1, 1, -1), groups=b * 3)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel.view(b * 3, 1, -1, 1), groups=b * 3)
    return torch.where(apply.view(b, 1, 1, 1), flat.view(b, 3, h, w), images)


def simclr_view(images: torch.Tensor, size: int, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """One augmented view [B, 3, size, size] in [0, 1] of uint8 or [0, 1] float images [B, 3, S, S]."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    x = random_resized_crop(x, size, config, generator)
    if config.jitter_p > 0 and config.jitter_strength > 0:
        x = colour_jitter(x, config, generator)
    if config.grayscale_p > 0:
        x = random_grayscale(x, config.grayscale_p, generator)
    if config.blur_p > 0:
        x = gaussian_blur(x, config.blur_p, generator)
    return x
