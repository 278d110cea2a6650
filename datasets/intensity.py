"""Stored pixel values -> the 8-bit RGB every encoder pipeline consumes, without clipping.

Everything downstream of ``dataset.load_image`` (preprocessing, feature extraction, the decoded
uint8 image cache, augmentations) works on 8-bit RGB PIL images. 8-bit files (``L``, ``P``,
``RGB``, ``RGBA``, ``CMYK``, ...) convert as PIL converts them. Images with more than 8 bits per
value (PIL modes ``I;16*``, ``I`` (32-bit int), ``F`` (32-bit float); uint16/int/float arrays) are
scaled linearly from a window ``[lo, hi]`` to 0..255 and rounded to the nearest integer:

* ``minmax`` (default): the image's own minimum..maximum. Never clips; uses all 256 levels whatever
  the stored bit depth (10-, 12-, 14- or 16-bit X-rays stored in 16-bit PNGs alike). Absolute
  intensities are not comparable between images (as after the per-image normalisation of most
  X-ray pipelines); a constant image becomes black.
* ``dtype``: the storage type's full range (0..65535 for 16-bit; 0..1 for float images whose values
  lie in [0, 1], otherwise minmax). Keeps intensities comparable, but a 12-bit image in a 16-bit file
  uses 1/16 of the levels.
* ``(lo, hi)`` (the dataset option ``intensity_window=LO,HI``, e.g. ``0,4095`` for 12-bit data or
  ``-1000,400`` for CT in HU): one fixed window for every image; values outside it saturate at 0 or 255,
  which is what a window means.

Non-finite float pixels (NaN, inf) are an error: no rule maps them to a meaningful intensity.
8-bit images (files and uint8 arrays) are never rescaled, whatever the window: they are already in the
encoders' range, and JPEGs decoded on the GPU (benchmark/image_batches.py, nvJPEG) bypass this module.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

WINDOW_RULES = ("minmax", "dtype")
DEFAULT_WINDOW = "minmax"

_BIT_DEPTH = {"1": 1, "I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 32, "F": 32}


def bit_depth(mode: str) -> int:
    """Bits per stored value of a PIL mode (8 for ``L``, ``RGB``, ``P``...; 16 for ``I;16``; 32 for ``I``/``F``)."""
    return _BIT_DEPTH.get(mode, 8)


def is_high_depth(mode: str) -> bool:
    return bit_depth(mode) > 8


def parse_window(value: object) -> str | tuple[float, float]:
    """``None``/``"minmax"``/``"dtype"``/``"LO,HI"``/``[LO, HI]`` -> a rule name or ``(lo, hi)``; ValueError otherwise."""
    if value is None:
        return DEFAULT_WINDOW
    if isinstance(value, str):
        text = value.strip().lower()
        if text in WINDOW_RULES:
            return text
        value = [part for part in text.replace(":", ",").split(",")]
    if isinstance(value, (list, tuple)) and len(value) == 2:
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            lo = hi = float("nan")
        if np.isfinite(lo) and np.isfinite(hi) and lo < hi:
            return (lo, hi)
    raise ValueError(f"option 'intensity_window' must be minmax, dtype or LO,HI with finite LO < HI "
                     f"(e.g. 0,4095), got {value!r}")


def window_label(window: str | tuple[float, float]) -> str:
    """Text for names and records: ``minmax``, ``dtype``, ``0-4095``."""
    if isinstance(window, str):
        return window
    return "-".join(f"{v:g}" for v in window)


def _limits(values: np.ndarray, window: str | tuple[float, float]) -> tuple[float, float]:
    if not isinstance(window, str):
        return window
    if window == "dtype":
        if np.issubdtype(values.dtype, np.integer):
            info = np.iinfo(values.dtype)
            return float(info.min), float(info.max)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            return 0.0, 1.0
    return (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)


def scale_to_uint8(values: np.ndarray, window: str | tuple[float, float] = DEFAULT_WINDOW) -> np.ndarray:
    """``values`` (any real dtype, any shape) -> uint8 of the same shape: linear from the window to 0..255, rounded."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise ValueError(f"{int((~np.isfinite(values)).sum())} pixel(s) are NaN or infinite")
    lo, hi = _limits(values, window)
    data = values.astype(np.float64)
    if hi <= lo:  # a constant image under minmax
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (data - lo) * (255.0 / (hi - lo))
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def to_rgb8(image: Image.Image, window: str | tuple[float, float] = DEFAULT_WINDOW) -> Image.Image:
    """An 8-bit RGB PIL image from any PIL image (16-bit and float scaled by ``window``, never clipped by default)."""
    if is_high_depth(image.mode):
        grey = scale_to_uint8(np.asarray(image), window)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return image.convert("RGB")


def array_to_rgb8(array: np.ndarray, window: str | tuple[float, float] = DEFAULT_WINDOW) -> Image.Image:
    """One image of an array dataset, [H, W] or [H, W, 3] of any real dtype -> 8-bit RGB PIL image."""
    if array.dtype != np.uint8:
        array = scale_to_uint8(array, window)
    image = Image.fromarray(np.ascontiguousarray(array), mode="L" if array.ndim == 2 else "RGB")
    return image.convert("RGB")


def array_mode(array: np.ndarray) -> str:
    """The PIL mode name an array dataset's images correspond to (``L``, ``RGB``, ``I;16``, ``F``...)."""
    if array.dtype == np.uint8:
        return "L" if array.ndim == 3 else "RGB"
    kind = "I;16" if array.dtype in (np.uint16, np.int16) else ("F" if np.issubdtype(array.dtype, np.floating) else "I")
    return kind if array.ndim == 3 else f"{kind} x3"
