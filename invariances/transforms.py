"""Transformation grids of the invariance study (ERIC-I ``ManualTransform``), resolution-independent.

Every transform has a parameter grid of ``k`` points built for any ``k`` (no perfect-square
requirement) and flags which points are the identity; the identity is excluded from every average.

A transformed view of an image is built the way the encoder sees a clean image, with the operation
inserted before the crop::

    PIL image -> resize (encoder's resize policy) -> operation -> centre crop -> [0, 1] -> normalize

``resized_crop`` replaces the crop. Geometric amounts are relative (fractions of the resized
image, degrees) and pixel amounts (blur sigma) are given at a 224-pixel reference crop and scaled
with the encoder's input size, so a grid means the same at 128 and 224 pixels.

Grid sizes (``k`` = requested points, default 256 as in ERIC-I):

* 1-D grids (rotation, scale, brightness, contrast, saturation, hue, blur, sharpness, elastic): ``k`` points.
* translation and shear: a ``m x n`` grid, the smallest balanced one with ``m * n >= k``
  (:func:`balanced_counts`: k=256 -> 16x16, k=20 -> 5x4, k=5 -> 3x2). Axis values are a symmetric
  ``linspace(-s, s, m)`` (ERIC-I's ``linspace(-s, s, m + 1)[:m]`` is asymmetric).
* resized_crop: a 4-D grid (top, left, height, width) with balanced counts whose product is >= k
  (k=256 -> 4^4, k=20 -> 3x2x2x2 = 24).
* hflip, vflip, grayscale, invert, equalize: {off, on} (k ignored); posterize: bits 1..7 (k ignored).

The exact parameter lists used go into the record (``resolved.grids``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from pretrained.preprocessing import Preprocessing, _INTERPOLATIONS

REFERENCE_SIZE = 224  # pixel amounts (blur sigma, elastic field) are defined at this crop size
TRANSLATION_FRACTION = (1 - 224 / 256) / 2  # ERIC-I: +-16 px of a 256 resize (0.0625 of the resized side)
ELASTIC_SIGMA = 5.0  # torchvision ElasticTransform default smoothness (px at the reference size)
ELASTIC_ALPHA = (50.0, 500.0)  # strength range (torchvision units at the reference size)

ALL_TRANSFORMS = ("rotation", "hflip", "vflip", "translation", "scale", "shear", "resized_crop", "brightness",
                  "contrast", "saturation", "hue", "blur", "sharpness", "posterize", "grayscale", "invert",
                  "equalize", "elastic")
SEED_NAMES = {"hflip": "h_flip", "vflip": "v_flip", "elastic": "deform"}  # ERIC-I / ANTON names


def balanced_counts(k: int, dims: int) -> tuple[int, ...]:
    """Per-axis counts of the smallest balanced grid with at least ``k`` points.

    Starts from 1 per axis and increments the smallest axis (the first on ties) until the product
    reaches ``k``: ``balanced_counts(256, 2) == (16, 16)``, ``balanced_counts(20, 2) == (5, 4)``.
    """
    if k < 1 or dims < 1:
        raise ValueError(f"need k >= 1 and dims >= 1, got k={k}, dims={dims}")
    counts = [1] * dims
    while math.prod(counts) < k:
        counts[int(np.argmin(counts))] += 1
    return tuple(sorted(counts, reverse=True))


def _linspace(lo: float, hi: float, n: int) -> list[float]:
    return [float(v) for v in np.linspace(lo, hi, n)] if n > 1 else [float((lo + hi) / 2)]


@dataclass(frozen=True)
class ViewGeometry:
    """The resize/crop of an encoder's preprocessing, split so an operation can go in between.

    ``resize`` then ``crop`` reproduces :meth:`Preprocessing.geometry` exactly; ``to_input`` turns a
    cropped PIL image into the network input [3, S, S] (grey replication and normalisation included).
    """

    preprocessing: Preprocessing

    @property
    def size(self) -> int:
        return self.preprocessing.input_size

    @property
    def interpolation(self) -> InterpolationMode:
        return _INTERPOLATIONS[self.preprocessing.interpolation]

    def resize(self, image: Image.Image) -> Image.Image:
        pre = self.preprocessing
        if pre.resize_size is None:
            return TF.resize(image.convert("RGB"), [pre.input_size, pre.input_size], interpolation=self.interpolation)
        return TF.resize(image.convert("RGB"), pre.resize_size, interpolation=self.interpolation)

    def crop(self, image: Image.Image) -> Image.Image:
        if image.size == (self.size, self.size):
            return image
        return TF.center_crop(image, [self.size, self.size])

    def to_input(self, cropped: Image.Image) -> torch.Tensor:
        """A ``size x size`` PIL image -> normalised network input [3, S, S]."""
        tail = dataclasses.replace(self.preprocessing, resize_size=None)  # geometry is then a no-op
        return self.preprocessing.normalize(tail.to_unit_tensor(cropped))

    def clean(self, image: Image.Image) -> torch.Tensor:
        return self.to_input(self.crop(self.resize(image)))


@dataclass(frozen=True)
class TransformGrid:
    """One transformation and its parameter points.

    ``apply(resized_image, param, geometry)`` returns the transformed image; ``replaces_crop`` says
    it already returns the ``S x S`` crop (resized_crop). ``identity[j]`` flags identity points.
    """

    name: str
    params: tuple[Any, ...]
    identity: tuple[bool, ...]
    apply: Callable[[Image.Image, Any, ViewGeometry], Image.Image]
    replaces_crop: bool = False
    description: str = ""

    @property
    def active(self) -> list[int]:
        """Indices of the non-identity points (the ones that are scored)."""
        return [j for j, is_identity in enumerate(self.identity) if not is_identity]

    def view_image(self, image: Image.Image, index: int, geometry: ViewGeometry) -> Image.Image:
        """The ``S x S`` PIL view of ``image`` under parameter ``index`` (before normalisation)."""
        out = self.apply(geometry.resize(image), self.params[index], geometry)
        return out if self.replaces_crop else geometry.crop(out)

    def view(self, image: Image.Image, index: int, geometry: ViewGeometry) -> torch.Tensor:
        """Network input [3, S, S] of ``image`` under parameter ``index``."""
        return geometry.to_input(self.view_image(image, index, geometry))

    def describe(self) -> dict:
        return {"params": [list(p) if isinstance(p, tuple) else p for p in self.params],
                "identity": list(self.identity), "n_scored": len(self.active), "description": self.description}


# -- operations (on the resized, not yet cropped, PIL image) ----------------------------------------
def _geometric_mode(name: str) -> InterpolationMode:
    return {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR}[name]


def _affine(image: Image.Image, mode: InterpolationMode, *, translate=(0, 0), scale=1.0, shear=(0.0, 0.0)) -> Image.Image:
    return TF.affine(image, angle=0.0, translate=list(translate), scale=scale, shear=list(shear),
                     interpolation=mode, fill=0)


def _short_side(image: Image.Image) -> int:
    return min(image.size)


def _scaled(value: float, geometry: ViewGeometry) -> float:
    return value * geometry.size / REFERENCE_SIZE


def _blur(image: Image.Image, sigma: float, geometry: ViewGeometry) -> Image.Image:
    kernel = 1 + (geometry.size // 20) * 2  # ERIC-I: 1 + (224 // 20) * 2 = 23 at 224 px
    return TF.gaussian_blur(image, [kernel, kernel], [_scaled(sigma, geometry)] * 2)


def elastic_displacement(alpha: float, sigma: float, seed: int, height: int, width: int, size: int) -> torch.Tensor:
    """Seeded torchvision ``ElasticTransform`` displacement [1, height, width, 2] (normalised units).

    The field is drawn at the 224-pixel reference scale (``ElasticTransform.get_params`` under a
    private RNG seeded with ``seed``) and resampled to ``height x width``; normalised displacements
    are resolution-free, so the deformation is the same relative to the image at any input size.
    """
    ref_h = max(2, round(height * REFERENCE_SIZE / size))
    ref_w = max(2, round(width * REFERENCE_SIZE / size))
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)  # CPU only: leaves CUDA RNG untouched
        field = torchvision.transforms.ElasticTransform.get_params([alpha, alpha], [sigma, sigma], [ref_h, ref_w])
    if (ref_h, ref_w) != (height, width):
        field = F.interpolate(field.permute(0, 3, 1, 2), size=(height, width), mode="bilinear",
                              align_corners=False).permute(0, 2, 3, 1).contiguous()
    return field


def _elastic(image: Image.Image, param: tuple[float, int], geometry: ViewGeometry) -> Image.Image:
    alpha, seed = param
    field = elastic_displacement(alpha, ELASTIC_SIGMA, seed, image.height, image.width, geometry.size)
    return TF.elastic_transform(image, field, interpolation=InterpolationMode.BILINEAR, fill=[0.0, 0.0, 0.0])


def _resized_crop(image: Image.Image, param: tuple[float, float, float, float], geometry: ViewGeometry) -> Image.Image:
    top, left, height, width = param
    h, w = image.height, image.width
    return TF.resized_crop(image, round(top * h), round(left * w), max(1, round(height * h)), max(1, round(width * w)),
                           [geometry.size, geometry.size], interpolation=InterpolationMode.BILINEAR)


# The view functions below are module-level (bound with functools.partial, never lambdas) so that a
# TransformGrid pickles: DataLoader workers start from a fork server and receive the dataset pickled.
def _toggled(image: Image.Image, on: bool, geometry: ViewGeometry, *, op: Callable[[Image.Image], Image.Image]) -> Image.Image:
    return op(image) if on else image


def _grayscale3(image: Image.Image) -> Image.Image:
    return TF.rgb_to_grayscale(image, num_output_channels=3)


def _rotate(image: Image.Image, angle: float, geometry: ViewGeometry, *, mode: InterpolationMode) -> Image.Image:
    return TF.rotate(image, angle, interpolation=mode, fill=0)


def _translate(image: Image.Image, shift: tuple[float, float], geometry: ViewGeometry, *,
               mode: InterpolationMode) -> Image.Image:
    side = _short_side(image)
    return _affine(image, mode, translate=(round(shift[0] * side), round(shift[1] * side)))


def _zoom(image: Image.Image, scale: float, geometry: ViewGeometry, *, mode: InterpolationMode) -> Image.Image:
    return _affine(image, mode, scale=scale)


def _shear(image: Image.Image, shear: tuple[float, float], geometry: ViewGeometry, *, mode: InterpolationMode) -> Image.Image:
    return _affine(image, mode, shear=shear)


def _with_factor(image: Image.Image, factor: float, geometry: ViewGeometry, *,
                 op: Callable[[Image.Image, float], Image.Image]) -> Image.Image:
    return op(image, factor)


def _posterize(image: Image.Image, bits: int, geometry: ViewGeometry) -> Image.Image:
    return TF.posterize(image, int(bits))


def build_grid(name: str, k: int = 256, interpolation: str = "nearest", elastic_seed: int = 0) -> TransformGrid:
    """The parameter grid of transform ``name`` with ``k`` points (see the module docstring).

    Args:
        name: one of :data:`ALL_TRANSFORMS`.
        k: requested grid points for continuous transforms (>= 1; binary ones ignore it).
        interpolation: "nearest" (torchvision's default, as ERIC-I) or "bilinear", for rotation,
            translation, scale and shear.
        elastic_seed: base seed of the elastic displacement fields (field j uses seed + j).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    mode = _geometric_mode(interpolation)
    if name == "rotation":
        angles = [float(a) for a in np.linspace(0.0, 360.0, k + 1)[:k]]
        return TransformGrid(name, tuple(angles), tuple(a == 0.0 for a in angles),
                             partial(_rotate, mode=mode),
                             description="angle (degrees) = linspace(0, 360, k + 1)[:k], about the centre, black fill")
    if name in ("hflip", "vflip", "grayscale", "invert", "equalize"):
        op = {"hflip": TF.hflip, "vflip": TF.vflip, "invert": TF.invert, "equalize": TF.equalize,
              "grayscale": _grayscale3}[name]
        return TransformGrid(name, (False, True), (True, False), partial(_toggled, op=op), description="{off, on}")
    if name == "translation":
        rows, cols = balanced_counts(k, 2)
        xs, ys = _linspace(-TRANSLATION_FRACTION, TRANSLATION_FRACTION, cols), _linspace(-TRANSLATION_FRACTION, TRANSLATION_FRACTION, rows)
        params = tuple((x, y) for y in ys for x in xs)
        return TransformGrid(name, params, tuple(abs(x) < 1e-12 and abs(y) < 1e-12 for x, y in params),
                             partial(_translate, mode=mode),
                             description=f"(dx, dy) fractions of the resized short side, {cols}x{rows} grid over "
                                         f"+-{TRANSLATION_FRACTION:g} (ERIC-I: +-16 px of 256), applied before the crop, black fill")
    if name == "scale":
        scales = _linspace(0.25, 2.0, k)
        return TransformGrid(name, tuple(scales), tuple(abs(s - 1.0) < 1e-9 for s in scales),
                             partial(_zoom, mode=mode),
                             description="zoom factor linspace(0.25, 2, k) about the centre, black fill")
    if name == "shear":
        rows, cols = balanced_counts(k, 2)
        xs, ys = _linspace(-160.0, 160.0, cols), _linspace(-160.0, 160.0, rows)
        params = tuple((x, y) for y in ys for x in xs)
        return TransformGrid(name, params, tuple(abs(x) < 1e-9 and abs(y) < 1e-9 for x, y in params),
                             partial(_shear, mode=mode),
                             description=f"(x, y) shear in degrees, {cols}x{rows} grid over linspace(-160, 160)")
    if name == "resized_crop":
        n_top, n_left, n_h, n_w = balanced_counts(k, 4)
        params = tuple((t, l, h, w) for t in _linspace(0, 0.25, n_top) for l in _linspace(0, 0.25, n_left)
                       for h in _linspace(0.75, 0.25, n_h) for w in _linspace(0.75, 0.25, n_w))
        return TransformGrid(name, params, tuple(False for _ in params), _resized_crop, replaces_crop=True,
                             description=f"(top, left, height, width) fractions of the resized image, "
                                         f"{n_top}x{n_left}x{n_h}x{n_w} grid: top/left linspace(0, 0.25), "
                                         f"height/width linspace(0.75, 0.25); output S x S")
    if name in ("brightness", "contrast", "saturation"):
        op = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast, "saturation": TF.adjust_saturation}[name]
        factors = _linspace(0.25, 5.0, k)
        return TransformGrid(name, tuple(factors), tuple(abs(f - 1.0) < 1e-9 for f in factors),
                             partial(_with_factor, op=op), description="factor linspace(0.25, 5, k); 1 = identity")
    if name == "hue":
        shifts = _linspace(-0.5, 0.5, k)
        return TransformGrid(name, tuple(shifts), tuple(abs(h) < 1e-9 for h in shifts),
                             partial(_with_factor, op=TF.adjust_hue), description="hue shift linspace(-0.5, 0.5, k)")
    if name == "blur":
        sigmas = _linspace(1e-5, 20.0, k)
        return TransformGrid(name, tuple(sigmas), tuple(s < 1e-3 for s in sigmas), _blur,
                             description="Gaussian sigma linspace(1e-5, 20, k) px at 224 (scaled with the input size), "
                                         "kernel 1 + 2 * (S // 20); sigma < 1e-3 is the identity")
    if name == "sharpness":
        factors = _linspace(1.0, 30.0, k)
        return TransformGrid(name, tuple(factors), tuple(abs(f - 1.0) < 1e-9 for f in factors),
                             partial(_with_factor, op=TF.adjust_sharpness), description="factor linspace(1, 30, k)")
    if name == "posterize":
        return TransformGrid(name, tuple(range(1, 8)), tuple(False for _ in range(7)),
                             _posterize, description="bits 1..7")
    if name == "elastic":
        alphas = _linspace(*ELASTIC_ALPHA, k)
        params = tuple((a, elastic_seed + j) for j, a in enumerate(alphas))
        return TransformGrid(name, params, tuple(False for _ in params), _elastic,
                             description=f"torchvision ElasticTransform, (alpha, seed): alpha linspace{ELASTIC_ALPHA}, "
                                         f"sigma {ELASTIC_SIGMA} px at 224, one seeded field per point")
    raise ValueError(f"unknown transform '{name}'; choose from {', '.join(ALL_TRANSFORMS)}")


def build_grids(names: list[str] | tuple[str, ...], k: int | dict[str, int] = 256, interpolation: str = "nearest",
                elastic_seed: int = 0) -> list[TransformGrid]:
    """Grids for ``names`` (unknown names and duplicates are an error); ``k`` may be per transform."""
    unknown = [n for n in names if n not in ALL_TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown transform(s) {unknown}; choose from {', '.join(ALL_TRANSFORMS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"transforms listed twice: {list(names)}")
    per = k if isinstance(k, dict) else {}
    bad = sorted(set(per) - set(names))
    if bad:
        raise ValueError(f"k given for transforms not run: {bad}")
    default = k if isinstance(k, int) else 256
    return [build_grid(n, int(per.get(n, default)), interpolation, elastic_seed) for n in names]
