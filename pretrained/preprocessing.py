"""Each encoder's own input pipeline: resolution, resize/crop, channels, normalisation.

Every evaluator and probe feeds an encoder through its :class:`Preprocessing`, and records log
``to_dict()``, so SimCLR-v1 ([0, 1] input, no mean/std), MoCo-CXR (CXR mean/std) and
MIMIC-CheXpert (histogram normalisation to 0..255, grey to RGB) each get what they were trained on.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CXR_MEAN = (0.5020, 0.5020, 0.5020)
CXR_STD = (0.085585, 0.085585, 0.085585)

_INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
                   "nearest": InterpolationMode.NEAREST}


@dataclass(frozen=True)
class Preprocessing:
    """How one encoder wants its images.

    Attributes:
        input_size: side of the square crop the network sees.
        resize_size: the shorter image side is resized to this (aspect kept), then centre-cropped
            to ``input_size``; ``None`` resizes straight to ``input_size`` x ``input_size``.
        interpolation: "bicubic", "bilinear" or "nearest".
        mean, std: per-channel normalisation in [0, 1] units, or ``None`` for raw [0, 1] input.
        grayscale: convert to one channel and replicate it to three (CXR models).
        histogram_normalize: per-image histogram equalisation to the range 0..255 (MIMIC-CheXpert);
            applied after ``grayscale`` and instead of mean/std.
    """

    input_size: int = 224
    resize_size: int | None = 224
    interpolation: str = "bicubic"
    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD
    grayscale: bool = False
    histogram_normalize: bool = False

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {self.interpolation!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std must both be given or both be None")

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}

    def with_input_size(self, size: int) -> "Preprocessing":
        """The same pipeline at another resolution, keeping the resize/crop ratio."""
        if self.resize_size is None:
            return dataclasses.replace(self, input_size=size)
        ratio = self.resize_size / self.input_size
        return dataclasses.replace(self, input_size=size, resize_size=int(round(size * ratio)))

    # -- the pipeline ---------------------------------------------------------------------------
    def geometry(self, image: Image.Image) -> Image.Image:
        """Resize and centre-crop a PIL image to ``input_size`` (no colour change)."""
        mode = _INTERPOLATIONS[self.interpolation]
        if self.resize_size is None:
            return TF.resize(image, [self.input_size, self.input_size], interpolation=mode)
        image = TF.resize(image, self.resize_size, interpolation=mode)
        return TF.center_crop(image, [self.input_size, self.input_size])

    def geometry_key(self) -> dict:
        """The settings that decide :meth:`crop_uint8`'s pixels (the decoded-image cache key)."""
        return {"input_size": self.input_size, "resize_size": self.resize_size, "interpolation": self.interpolation}

    def crop_uint8(self, image: Image.Image) -> torch.Tensor:
        """Geometry of an image as RGB uint8 [3, input_size, input_size] (before any colour change).

        ``input_from_uint8(crop_uint8(image))`` equals ``self(image)`` exactly.
        """
        pixels = np.asarray(self.geometry(image.convert("RGB")), dtype=np.uint8)
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1)

    def unit_from_uint8(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [..., 3, H, W] after geometry -> [0, 1] float32 (grey replicated where asked), as
        ``to_tensor`` computes it."""
        tensor = pixels.to(torch.float32).div(255)
        if self.grayscale or self.histogram_normalize:
            grey = (0.299 * tensor[..., 0, :, :] + 0.587 * tensor[..., 1, :, :] + 0.114 * tensor[..., 2, :, :])
            tensor = grey.unsqueeze(-3).expand(*tensor.shape).contiguous()
        return tensor

    def input_from_uint8(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [..., 3, H, W] after geometry -> network input (on the tensor's device)."""
        return self.normalize(self.unit_from_uint8(pixels))

    def to_unit_tensor(self, image: Image.Image) -> torch.Tensor:
        """Geometry then [0, 1] float tensor [3, H, W] (grey replicated where asked)."""
        image = self.geometry(image.convert("RGB"))
        tensor = TF.to_tensor(image)
        if self.grayscale or self.histogram_normalize:
            grey = (0.299 * tensor[0] + 0.587 * tensor[1] + 0.114 * tensor[2]).unsqueeze(0)
            tensor = grey.expand(3, -1, -1).contiguous()
        return tensor

    def normalize(self, unit: torch.Tensor) -> torch.Tensor:
        """Map [0, 1] tensors [..., 3, H, W] to what the network expects."""
        if self.histogram_normalize:
            return histogram_normalize(unit)
        if self.mean is None:
            return unit
        mean = _channel_constants(self.mean, unit.dtype, unit.device)
        std = _channel_constants(self.std, unit.dtype, unit.device)
        return (unit - mean) / std

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> network input [3, input_size, input_size]."""
        return self.normalize(self.to_unit_tensor(image))


@functools.lru_cache(maxsize=64)
def _channel_constants(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Per-channel constants [C, 1, 1], made once per device (a fresh host->GPU copy per batch would
    make the host wait for the GPU). Made outside inference mode, so autograd may save them (probes)."""
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=dtype, device=device).view(-1, 1, 1)


def histogram_normalize(unit: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Per-image histogram equalisation, output in 0..255 (CovidPrognosis ``HistogramNormalize``).

    Args:
        unit: [3, H, W] or [N, 3, H, W] tensors in [0, 1] (channels equal for grey input).
    Returns:
        tensor of the same shape with values in [0, 255].
    """
    single = unit.dim() == 3
    batch = unit.unsqueeze(0) if single else unit
    out = torch.empty_like(batch)
    for index, image in enumerate(batch):
        values = image.detach().cpu().numpy()
        levels = np.clip((values * (bins - 1)).round().astype(np.int64), 0, bins - 1)
        histogram = np.bincount(levels.ravel(), minlength=bins)
        cdf = histogram.cumsum().astype(np.float64)
        cdf = (bins - 1) * (cdf - cdf.min()) / max(cdf.max() - cdf.min(), 1.0)
        out[index] = torch.from_numpy(cdf[levels].astype(np.float32)).to(unit.device, unit.dtype)
    return out[0] if single else out
