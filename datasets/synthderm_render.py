"""SynthDerm: a procedural, dermoscopy-like image generator (pure numpy/scipy, deterministic).

Each *lesion* gets class-dependent morphology (border irregularity from Fourier harmonics of the
radius, colour zones, pigment network, globules, streaks, vessels, lacunae, milia, scale, ...)
painted into a lesion-frame canvas of chromophore concentrations (melanin, deep "blue-grey"
melanin, oxy-/deoxy-haemoglobin, white). Each *image* of a lesion resamples that canvas under its
own nuisances (rotation, scale, shift) and adds hair, illumination gradient, brightness, white
balance, a dermoscope vignette, sensor noise and (for half of the images) JPEG compression. The
canvas already holds the lesion composited (Beer-Lambert) on textured skin of the patient's
Fitzpatrick type, so all images of a lesion show the same lesion on the same patch of skin.

Skin type, pigment density and the nuisances are drawn independently of the class and dominate
the mean colour, so the 7-way task cannot be solved from mean RGB; the class lives in shape and
texture. Randomness comes only from ``numpy.random.Generator(PCG64)`` streams spawned from
``SeedSequence(seed)``: lesion ``i`` (and its images) depend only on ``seed``, ``i``, its class,
``image_size`` and ``images_per_lesion``.
"""
from __future__ import annotations

import functools
import io
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

log = logging.getLogger(__name__)

SYNTHDERM_CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
HAM10000_CLASS_COUNTS: dict[str, int] = {
    "nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115}

LOCALIZATIONS: tuple[str, ...] = (
    "back", "trunk", "lower extremity", "upper extremity", "abdomen", "chest", "face", "scalp", "neck")
FITZPATRICK_WEIGHTS = np.array([0.19, 0.2, 0.18, 0.16, 0.14, 0.13])

# Chromophore channels of a lesion canvas; the first four are optical-density (absorption) vectors
# over RGB, the last one is an opaque white/yellow blend weight (scale, regression, milia, scar).
_MEL, _BG, _HB, _DEOXY, _WHITE = range(5)
_OD = np.array([
    [0.45, 0.80, 1.15],   # epidermal melanin -> brown
    [0.95, 0.62, 0.33],   # dermal melanin (Tyndall) -> blue-grey
    [0.05, 0.95, 0.80],   # oxy-haemoglobin -> red
    [0.55, 1.05, 0.30],   # deoxy-haemoglobin -> purple
])
_SKIN_RGB = np.array([  # Fitzpatrick I..VI under a dermoscope, sRGB in [0, 1]
    [0.93, 0.78, 0.72], [0.88, 0.70, 0.60], [0.80, 0.60, 0.48],
    [0.66, 0.46, 0.34], [0.48, 0.32, 0.22], [0.32, 0.21, 0.15]])
_CANVAS_EXTENT = 1.1  # the lesion canvas covers [-E, E]^2 lesion units; the image half-width is 1


@dataclass(frozen=True)
class _ClassSpec:
    """Class-level distributions: lesion radius range, border irregularity, border softness, metadata."""

    radius: tuple[float, float]
    irregularity: tuple[float, float]
    softness: tuple[float, float]
    age_mean: float
    p_male: float
    loc_weights: tuple[float, ...]   # over LOCALIZATIONS


_SPECS: dict[str, _ClassSpec] = {
    "akiec": _ClassSpec((0.26, 0.56), (0.05, 0.12), (0.08, 0.18), 67, 0.62, (2, 1, 2, 3, 1, 1, 8, 4, 2)),
    "bcc": _ClassSpec((0.25, 0.55), (0.03, 0.10), (0.05, 0.10), 66, 0.60, (5, 3, 2, 2, 1, 3, 7, 2, 3)),
    "bkl": _ClassSpec((0.28, 0.60), (0.04, 0.11), (0.02, 0.05), 60, 0.55, (6, 5, 2, 3, 2, 3, 6, 2, 2)),
    "df": _ClassSpec((0.22, 0.46), (0.02, 0.05), (0.10, 0.22), 50, 0.45, (1, 1, 9, 3, 1, 1, 0.2, 0.1, 0.2)),
    "mel": _ClassSpec((0.3, 0.65), (0.04, 0.16), (0.02, 0.08), 61, 0.60, (8, 5, 5, 4, 2, 3, 3, 1, 1)),
    "nv": _ClassSpec((0.24, 0.55), (0.015, 0.07), (0.05, 0.12), 45, 0.50, (8, 6, 6, 3, 4, 3, 1, 1, 1)),
    "vasc": _ClassSpec((0.20, 0.46), (0.03, 0.08), (0.03, 0.07), 50, 0.50, (3, 4, 4, 3, 3, 2, 2, 1, 2)),
}


# ----------------------------------------------------------------------------------------------
# Small building blocks
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Canvas:
    """Lesion-frame pixel grid (size x size) over [-E, E]^2; ``x``, ``y``, ``r``, ``phi``: (size, size)."""

    size: int
    px_per_unit: float
    x: np.ndarray
    y: np.ndarray
    r: np.ndarray
    phi: np.ndarray

    def to_px(self, u: np.ndarray) -> np.ndarray:
        """Lesion units -> canvas pixel coordinates."""
        return (u + _CANVAS_EXTENT) * self.px_per_unit


def _make_canvas(image_size: int) -> _Canvas:
    """Lesion canvas with the image's pixel density (image half-width = 1 lesion unit)."""
    size = max(24, int(math.ceil(image_size * _CANVAS_EXTENT)))
    u = np.linspace(-_CANVAS_EXTENT, _CANVAS_EXTENT, size)
    y, x = np.meshgrid(u, u, indexing="ij")
    return _Canvas(size, (size - 1) / (2 * _CANVAS_EXTENT), x, y, np.hypot(x, y), np.arctan2(y, x))


def _smoothstep(v: np.ndarray, lo: float | np.ndarray, hi: float | np.ndarray) -> np.ndarray:
    """0 below ``lo``, 1 above ``hi``, cubic in between."""
    t = np.clip((v - lo) / np.maximum(hi - lo, 1e-9), 0.0, 1.0)
    return t * t * (3 - 2 * t)


@functools.lru_cache(maxsize=256)
def _spline_taps(size: int, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cubic B-spline weights from a (cells + 3)-point grid to ``size`` samples.

    Returns tap indices and weights (size, 4) and the same as a dense matrix (size, cells + 3).
    """
    t = np.linspace(1.0, cells + 1.0, size)
    taps = np.floor(t).astype(np.int64)[:, None] + np.arange(-1, 3)[None, :]
    a = np.abs(t[:, None] - taps)
    w = np.where(a < 1, 2 / 3 - a ** 2 + a ** 3 / 2, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))
    idx = np.clip(taps, 0, cells + 2)
    dense = np.zeros((size, cells + 3))
    np.add.at(dense, (np.repeat(np.arange(size), 4), idx.ravel()), w.ravel())
    return idx, w, dense


def _spline_upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Separable cubic B-spline upsampling of a square grid (n + 3, n + 3) to (size, size).

    Uses einsum / gathers rather than matrix products so that no BLAS thread pool is involved.
    """
    idx, w, dense = _spline_taps(size, grid.shape[0] - 3)
    if grid.shape[0] <= 24:
        return np.einsum("ik,kl->il", np.einsum("ik,kl->il", dense, grid), dense.T)
    rows = (grid[idx] * w[:, :, None]).sum(1)              # (size, n + 3)
    return (rows[:, idx] * w[None]).sum(2)                 # (size, size)


def _coarse_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth zero-mean unit-std noise (size, size) with about ``cells`` features across."""
    field = _spline_upsample(rng.standard_normal((cells + 3, cells + 3)), size)
    return (field - field.mean()) / (field.std() + 1e-8)


def _bandpass_noise(rng: np.random.Generator, size: int, sigma_px: float) -> np.ndarray:
    """Band-pass noise (size, size) with features about ``2*sigma_px`` wide, zero mean, unit std.

    A white coarse grid (spacing ~2.5 sigma) minus its blur, B-spline upsampled: cheap and smooth.
    """
    cells = max(2, int(round(size / (2.5 * sigma_px))))
    grid = rng.standard_normal((cells + 3, cells + 3))
    grid -= ndimage.gaussian_filter(grid, 1.2, mode="wrap")
    field = _spline_upsample(grid, size)
    return (field - field.mean()) / (field.std() + 1e-8)


def _splat(size: int, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, sigma_px: float) -> np.ndarray:
    """Sum of Gaussian blobs (size, size) with peak ~``weights`` at sub-pixel (rows, cols)."""
    acc = np.zeros((size, size))
    r0, c0 = np.floor(rows), np.floor(cols)
    fr, fc = rows - r0, cols - c0
    r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (1, 0, fr * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 1, fr * fc)):
        rr, cc = r0 + dr, c0 + dc
        ok = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
        np.add.at(acc, (rr[ok], cc[ok]), (weights * w)[ok])
    sigma_px = max(sigma_px, 0.35)
    return ndimage.gaussian_filter(acc, sigma_px, truncate=3.0) * (2 * math.pi * sigma_px ** 2)


def _splat_sizes(cv: _Canvas, xs: np.ndarray, ys: np.ndarray, weights: np.ndarray,
                 sigmas: np.ndarray) -> np.ndarray:
    """Blobs of varying size (sigmas in lesion units), binned into a few Gaussian widths."""
    out = np.zeros((cv.size, cv.size))
    if len(xs) == 0:
        return out
    sig_px = sigmas * cv.px_per_unit
    edges = np.quantile(sig_px, [0, 1 / 3, 2 / 3, 1.0])
    bins = np.clip(np.searchsorted(edges[1:-1], sig_px, side="right"), 0, 2)
    for b in range(3):
        sel = bins == b
        if sel.any():
            out += _splat(cv.size, cv.to_px(ys[sel]), cv.to_px(xs[sel]), weights[sel], float(sig_px[sel].mean()))
    return out


def _polyline_field(size: int, rows: np.ndarray, cols: np.ndarray, sigma_px: float) -> np.ndarray:
    """Anti-aliased thin line (peak ~1) through densely sampled points (~2 per pixel)."""
    sigma_px = max(sigma_px, 0.45)
    w = np.full(len(rows), math.sqrt(2 * math.pi) * sigma_px / 2.0 / (2 * math.pi * sigma_px ** 2))
    return np.clip(_splat(size, rows, cols, w, sigma_px), 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Lesion geometry
# ----------------------------------------------------------------------------------------------
@dataclass
class _Geometry:
    """Lesion outline ``radius(phi)`` = R0 * exp(sum_k a_k cos(k phi + p_k)).

    Canvas maps (C, C): ``outline`` = radius(phi), ``rho`` = r / radius with a rough border, ``mask`` soft in [0, 1].
    """

    r0: float
    amps: np.ndarray
    phases: np.ndarray
    rho: np.ndarray
    mask: np.ndarray
    outline: np.ndarray

    def radius_at(self, phi: np.ndarray) -> np.ndarray:
        """Outline radius (lesion units) at angles ``phi`` (any shape), capped to stay on the canvas."""
        k = np.arange(1, len(self.amps) + 1)
        harm = (self.amps * np.cos(np.multiply.outer(phi, k) + self.phases)).sum(-1)
        return np.minimum(self.r0 * np.exp(harm), 0.82)


def _make_geometry(rng: np.random.Generator, cv: _Canvas, spec: _ClassSpec, r0: float) -> _Geometry:
    """Random outline with class-dependent irregularity (harmonics 1..12) plus fine border roughness."""
    irr = rng.uniform(*spec.irregularity)
    k = np.arange(1, 13)
    amps = irr * rng.standard_normal(12) / k ** 0.9
    amps[1] = rng.uniform(0.0, 0.22)                     # elongation (ellipticity), any class
    phases = rng.uniform(0, 2 * np.pi, 12)
    geo = _Geometry(r0, amps, phases, np.zeros(1), np.zeros(1), np.zeros(1))
    table_phi = np.linspace(-np.pi, np.pi, 721)
    geo.outline = np.interp(cv.phi, table_phi, geo.radius_at(table_phi))
    rho = cv.r / geo.outline
    rough = irr * 0.6 * _bandpass_noise(rng, cv.size, max(0.8, 0.035 * cv.px_per_unit))
    rho = rho * (1 + rough * _smoothstep(rho, 0.6, 0.95))
    softness = rng.uniform(*spec.softness)
    geo.rho = rho
    geo.mask = 1.0 / (1.0 + np.exp(np.clip((rho - 1.0) / softness, -40, 40)))
    return geo


def _points_in_lesion(rng: np.random.Generator, geo: _Geometry, n: int, rho_lo: float = 0.0,
                      rho_hi: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random points (x, y) in lesion units with rho in [rho_lo, rho_hi] (area-uniform)."""
    phi = rng.uniform(0, 2 * np.pi, n)
    t = np.sqrt(rng.uniform(rho_lo ** 2, rho_hi ** 2, n))
    rad = t * geo.radius_at(phi)
    return rad * np.cos(phi), rad * np.sin(phi)


# ----------------------------------------------------------------------------------------------
# Dermoscopic structures (each returns a (size, size) field, ~[0, 1])
# ----------------------------------------------------------------------------------------------
def _network(rng: np.random.Generator, cv: _Canvas, spacing: float, irregular: float) -> np.ndarray:
    """Reticular pigment network: 1 on the mesh lines, ~0 in the holes; ``irregular`` in [0, 1]."""
    n = int(2 * _CANVAS_EXTENT / spacing) + 2
    g = (np.arange(n) - (n - 1) / 2) * spacing
    gy, gx = (a.ravel() for a in np.meshgrid(g, g, indexing="ij"))
    gx = gx + spacing * (0.18 + 0.3 * irregular) * rng.standard_normal(gx.size)
    gy = gy + spacing * (0.18 + 0.3 * irregular) * rng.standard_normal(gy.size)
    keep = rng.uniform(size=gx.size) > 0.25 * irregular          # missing holes -> blotchy patches
    sig = spacing * 0.3 * np.exp(0.35 * irregular * rng.standard_normal(gx.size))
    holes = _splat_sizes(cv, gx[keep], gy[keep], np.ones(int(keep.sum())), sig[keep])
    thick = 2.5 + 2.0 * irregular * _coarse_noise(rng, cv.size, 4)
    return np.exp(-np.clip(thick, 0.8, None) * holes)


def _globules(rng: np.random.Generator, cv: _Canvas, geo: _Geometry, n: int, size: float,
              size_spread: float, rho_lo: float = 0.0, rho_hi: float = 0.9) -> np.ndarray:
    """``n`` round dots/globules (Gaussian sigma ~``size`` lesion units, log-normal spread) in the lesion."""
    xs, ys = _points_in_lesion(rng, geo, n, rho_lo, rho_hi)
    sig = size * np.exp(size_spread * rng.standard_normal(n))
    return np.clip(_splat_sizes(cv, xs, ys, rng.uniform(0.6, 1.0, n), sig), 0, 1.5)


def _streaks(rng: np.random.Generator, cv: _Canvas, geo: _Geometry, n: int, spread: float) -> np.ndarray:
    """Radial streaks / pseudopods crossing the border, within +-``spread`` rad of a random direction."""
    angles = np.sort(np.mod(rng.uniform(0, 2 * np.pi) + rng.uniform(-spread, spread, n), 2 * np.pi))
    width = rng.uniform(0.012, 0.025, n)
    length = rng.uniform(0.12, 0.3, n)
    phi = np.mod(cv.phi, 2 * np.pi)
    right = np.searchsorted(angles, phi) % n             # nearest streak is angles[right] or angles[left]
    left = (right - 1) % n
    d_right = np.angle(np.exp(1j * (phi - angles[right])))
    d_left = np.angle(np.exp(1j * (phi - angles[left])))
    near = np.where(np.abs(d_right) < np.abs(d_left), right, left)
    dphi = np.where(near == right, d_right, d_left)
    across = np.exp(-(dphi * cv.r / width[near]) ** 2)
    radius, ln = geo.outline, length[near]
    along = _smoothstep(cv.r, radius * 0.7, radius * 0.85) * (
        1 - _smoothstep(cv.r, radius * (1 + ln * 0.5), radius * (1 + ln)))
    return np.clip(across * along, 0, 1)


def _vessel_tree(rng: np.random.Generator, cv: _Canvas, geo: _Geometry, n_trees: int, width: float,
                 length: float, depth_max: int) -> np.ndarray:
    """Branching curvilinear vessels (``length`` x lesion radius, ``depth_max`` branching levels)."""
    step = 0.5 / cv.px_per_unit
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    for _ in range(n_trees):
        x0, y0 = _points_in_lesion(rng, geo, 1, 0.3, 0.85)
        stack = [(float(x0[0]), float(y0[0]), rng.uniform(0, 2 * np.pi), geo.r0 * length * rng.uniform(0.7, 1.3), 0)]
        while stack:
            x, y, ang, seg_len, depth = stack.pop()
            n = max(2, int(seg_len / step))
            turns = np.cumsum(rng.normal(0, 1.0, n) * math.sqrt(step / 0.05) * 0.25)
            ang_path = ang + turns
            xs = x + np.cumsum(np.cos(ang_path)) * step
            ys = y + np.cumsum(np.sin(ang_path)) * step
            rows.append(cv.to_px(ys))
            cols.append(cv.to_px(xs))
            if depth < depth_max:
                for _ in range(rng.integers(1, 3)):
                    j = rng.integers(n // 3, n)
                    stack.append((xs[j], ys[j], ang_path[j] + rng.choice([-1, 1]) * rng.uniform(0.4, 1.1),
                                  seg_len * rng.uniform(0.4, 0.7), depth + 1))
    if not rows:
        return np.zeros((cv.size, cv.size))
    return _polyline_field(cv.size, np.concatenate(rows), np.concatenate(cols), width * cv.px_per_unit)


def _lacunae(rng: np.random.Generator, cv: _Canvas, geo: _Geometry, n: int,
             size: tuple[float, float]) -> np.ndarray:
    """Round, sharply demarcated red/purple lacunae separated by thin septa (distance transform)."""
    xs, ys = _points_in_lesion(rng, geo, n, 0.0, 0.85)
    seeds = np.ones((cv.size, cv.size), dtype=bool)
    rr = np.clip(np.rint(cv.to_px(ys)).astype(int), 0, cv.size - 1)
    cc = np.clip(np.rint(cv.to_px(xs)).astype(int), 0, cv.size - 1)
    seeds[rr, cc] = False
    d2 = (xs[:, None] - xs[None]) ** 2 + (ys[:, None] - ys[None]) ** 2
    np.fill_diagonal(d2, np.inf)
    nn = np.sqrt(d2.min(1)) if n > 1 else np.full(n, np.inf)
    radius_px = np.ones((cv.size, cv.size))
    radius_px[rr, cc] = np.minimum(rng.uniform(*size, n), 0.5 * nn) * cv.px_per_unit
    dist, idx = ndimage.distance_transform_edt(seeds, return_indices=True)
    own = radius_px[idx[0], idx[1]]
    return 1.0 / (1.0 + np.exp(np.clip((dist - own) / 0.6, -40, 40)))


# ----------------------------------------------------------------------------------------------
# Class painters: add chromophore concentrations to conc (5, C, C) for one lesion (channels _MEL,
# _BG, _HB, _DEOXY, _WHITE); return the sub-type ("variant") drawn. Variants deliberately include
# mimics of other classes (dysplastic/Spitz/blue nevi, early/amelanotic melanoma, ...).
# ----------------------------------------------------------------------------------------------
_Painter = Callable[[np.random.Generator, _Canvas, _Geometry, np.ndarray], str]


def _pick(rng: np.random.Generator, probs: dict[str, float]) -> str:
    """Draw one key of ``probs`` (weights need not sum to 1)."""
    names = list(probs)
    p = np.asarray(list(probs.values()), dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _zone_mix(rng: np.random.Generator, cv: _Canvas, protos: np.ndarray, sharpness: float,
              eccentric: float) -> np.ndarray:
    """Blend K colour prototypes (K, 5) with smooth noisy zones -> (5, size, size)."""
    k = len(protos)
    ang = rng.uniform(0, 2 * np.pi)
    drift = (cv.x * np.cos(ang) + cv.y * np.sin(ang)) / 0.5
    logits = np.stack([_coarse_noise(rng, cv.size, 3) + eccentric * drift * rng.normal(0, 1) for _ in range(k)])
    w = np.exp(sharpness * (logits - logits.max(0)))
    w /= w.sum(0)
    return np.einsum("kc,kij->cij", protos, w)


def _mottle(rng: np.random.Generator, cv: _Canvas, amount: float, cells: int = 4) -> np.ndarray:
    return 1 + amount * _coarse_noise(rng, cv.size, cells)


_PROTOS = {  # chromophore concentrations of colour zones: mel, bg, hb, deoxy, white
    "light_brown": (0.7, 0.0, 0.05, 0.0, 0.0), "dark_brown": (1.6, 0.1, 0.0, 0.0, 0.0),
    "black": (2.4, 0.7, 0.0, 0.0, 0.0), "blue_grey": (0.3, 1.1, 0.0, 0.1, 0.12),
    "red": (0.2, 0.0, 0.7, 0.0, 0.0), "white": (0.15, 0.15, 0.1, 0.0, 0.45),
    "pink": (0.25, 0.0, 0.3, 0.0, 0.05)}


def _protos(rng: np.random.Generator, names: list[str], weights: list[float], k: int) -> np.ndarray:
    """``k`` distinct colour prototypes (k, 5) drawn by weight, each with +-25% intensity."""
    p = np.asarray(weights, dtype=float)
    chosen = rng.choice(len(names), size=k, replace=False, p=p / p.sum())
    return np.array([_PROTOS[names[i]] for i in chosen]) * rng.uniform(0.75, 1.25, (k, 1))


def _paint_nv(rng: np.random.Generator, cv: _Canvas, geo: _Geometry, conc: np.ndarray) -> str:
    variant = _pick(rng, {"reticular": 0.36, "globular": 0.2, "homogeneous": 0.1, "dermal": 0.1,
                          "dysplastic": 0.14, "spitz": 0.05, "blue": 0.05})
    m = geo.mask
    inner = _smoothstep(1 - geo.rho, 0.0, 0.6)
    base = rng.uniform(0.6, 1.3) * (1 + rng.uniform(-0.35, 0.5) * inner) * _mottle(rng, cv, 0.08, 3)
    if variant == "dermal":
        conc[_MEL] += 0.35 * base * m
        conc[_HB] += rng.uniform(0.15, 0.35) * m
        conc[_HB] += 1.3 * _vessel_tree(rng, cv, geo, int(rng.integers(1, 4)), 0.006, 0.25, 1) * m
        return variant
    if variant == "blue":
        conc[_BG] += rng.uniform(0.7, 1.4) * _mottle(rng, cv, 0.1) * m
        conc[_MEL] += rng.uniform(0.1, 0.4) * m
        return variant
    if variant == "spitz":
        conc[_MEL] += 1.2 * base * m
        conc[_MEL] += rng.uniform(1.0, 1.8) * _streaks(rng, cv, geo, int(rng.integers(14, 26)), np.pi)
        return variant
    if variant in ("reticular", "dysplastic"):
        irregular = rng.uniform(0.0, 0.2) if variant == "reticular" else rng.uniform(0.3, 0.7)
        net = _network(rng, cv, rng.uniform(0.055, 0.09), irregular)
        base = base * (0.55 + 0.8 * net * (1 - 0.7 * _smoothstep(geo.rho, 0.6, 1.0)))
    elif variant == "globular":
        base = base * (0.6 + 0.9 * _globules(rng, cv, geo, int(rng.integers(25, 60)), rng.uniform(0.018, 0.028), 0.12))
    if variant == "dysplastic":
        mix = _zone_mix(rng, cv, _protos(rng, ["light_brown", "dark_brown", "pink"], [1, 1, 0.6], 2),
                        rng.uniform(1.0, 2.5), rng.uniform(0.0, 0.8))
        conc += mix * base * m
        return variant
    conc[_MEL] += base * m
    conc[_BG] += rng.uniform(0.0, 0.1) * inner * m
    return variant


def _paint_mel(rng: np.random.Generator, cv: _Canvas, geo: _Geometry, conc: np.ndarray) -> str:
    variant = _pick(rng, {"multicomponent": 0.6, "early": 0.2, "nodular": 0.1, "amelanotic": 0.1})
    m = geo.mask
    if variant == "amelanotic":
        conc[_HB] += rng.uniform(0.3, 0.6) * m * _mottle(rng, cv, 0.3)
        conc[_MEL] += rng.uniform(0.1, 0.35) * m
        conc[_HB] += 1.0 * _globules(rng, cv, geo, int(rng.integers(15, 40)), 0.008, 0.3) * m
        conc[_HB] += 1.2 * _vessel_tree(rng, cv, geo, int(rng.integers(1, 4)), 0.007, 0.3, 1) * m
        return variant
    if variant == "nodular":
        mix = _zone_mix(rng, cv, _protos(rng, ["black", "blue_grey", "dark_brown", "red"], [1, 1, 0.6, 0.3], 2),
                        rng.uniform(1.0, 2.5), rng.uniform(0.0, 0.6))
        conc += mix * m * _mottle(rng, cv, 0.1)
        return variant
    if variant == "early":
        protos = _protos(rng, ["light_brown", "dark_brown", "blue_grey"], [1, 1, 0.3], 2)
        sharp, ecc, p_net, p_dots, p_streak, p_veil = rng.uniform(1.5, 3.0), rng.uniform(0.3, 1.0), 0.8, 0.5, 0.1, 0.05
    else:
        protos = _protos(rng, ["light_brown", "dark_brown", "black", "blue_grey", "red", "white"],
                         [1.0, 1.0, 0.6, 0.5, 0.35, 0.3], int(rng.integers(3, 6)))
        sharp, ecc, p_net, p_dots, p_streak, p_veil = rng.uniform(1.5, 4.0), rng.uniform(0.5, 1.5), 0.6, 0.6, 0.4, 0.3
    mix = _zone_mix(rng, cv, protos, sharp, ecc)
    if rng.uniform() < p_net:
        net = _network(rng, cv, rng.uniform(0.06, 0.11), rng.uniform(0.6, 1.0))
        patch = _smoothstep(_coarse_noise(rng, cv.size, 3), -0.5, 0.5)
        mix[:4] *= 1 + 0.9 * patch * (net - 0.45)
    if rng.uniform() < p_dots:
        dots = _globules(rng, cv, geo, int(rng.integers(10, 45)), rng.uniform(0.01, 0.025), 0.5, 0.35, 1.0)
        mix[_MEL] += 1.6 * dots
        mix[_BG] += 0.3 * dots
    conc += mix * m
    if rng.uniform() < p_streak:
        conc[_MEL] += rng.uniform(1.2, 2.2) * _streaks(rng, cv, geo, int(rng.integers(5, 16)), 1.6)
    if rng.uniform() < p_veil:
        veil = _smoothstep(_coarse_noise(rng, cv.size, 3), 0.3, 1.2) * m
        conc[_BG] += 1.0 * veil
        conc[_WHITE] += 0.3 * veil
    return variant


def _paint_bkl(rng: np.random.Generator, cv: _Canvas, geo: _Geometry, conc: np.ndarray) -> str:
    variant = _pick(rng, {"seborrheic": 0.5, "lentigo": 0.3, "lplk": 0.2})
    m = geo.mask
    if variant == "lentigo":
        conc[_MEL] += rng.uniform(0.45, 1.1) * _mottle(rng, cv, 0.15) * m
        lines = np.exp(-(_bandpass_noise(rng, cv.size, max(0.5, 0.018 * cv.px_per_unit)) / 0.35) ** 2)
        conc[_MEL] += rng.uniform(0.2, 0.5) * lines * m
        return variant
    if variant == "lplk":
        conc[_MEL] += rng.uniform(0.25, 0.7) * _mottle(rng, cv, 0.2) * m
        conc[_HB] += rng.uniform(0.1, 0.25) * m
        pepper = _globules(rng, cv, geo, int(rng.integers(60, 160)), 0.006, 0.2)
        conc[_BG] += rng.uniform(0.8, 1.4) * pepper * m
        return variant
    ridges = _bandpass_noise(rng, cv.size, max(0.7, rng.uniform(0.022, 0.04) * cv.px_per_unit))
    fissure = np.exp(-(ridges / 0.45) ** 2)
    conc[_MEL] += rng.uniform(0.5, 2.1) * _mottle(rng, cv, 0.15) * (0.85 + 0.5 * fissure - 0.15 * np.tanh(ridges)) * m
    conc[_WHITE] += rng.uniform(0.0, 0.12) * m * _smoothstep(ridges, 0.8, 1.8)
    milia = _globules(rng, cv, geo, int(rng.integers(2, 16)), rng.uniform(0.01, 0.018), 0.3)
    conc[_WHITE] += rng.uniform(0.5, 0.85) * np.clip(milia, 0, 1) * m
    conc[_MEL] += 1.8 * _globules(rng, cv, geo, int(rng.integers(0, 10)), 0.014, 0.3) * m
    return variant


def _paint_df(rng: np.random.Generator, cv: _Canvas, geo: _Geometry, conc: np.ndarray) -> str:
    variant = _pick(rng, {"central_patch": 0.75, "homogeneous": 0.25})
    conc[_MEL] += rng.uniform(0.35, 0.9) * geo.mask * _mottle(rng, cv, 0.1)
    conc[_HB] += rng.uniform(0.08, 0.25) * geo.mask
    net = _network(rng, cv, rng.uniform(0.045, 0.07), rng.uniform(0.0, 0.3))
    conc[_MEL] += 0.6 * net * _smoothstep(geo.rho, 0.35, 0.65) * geo.mask
    if variant == "central_patch":
        patch_r = rng.uniform(0.35, 0.7)
        scar = 1 - _smoothstep(geo.rho + 0.15 * _coarse_noise(rng, cv.size, 5), patch_r * 0.5, patch_r)
        conc[_WHITE] += rng.uniform(0.25, 0.55) * scar
        conc[_MEL] *= 1 - 0.6 * scar
    return variant


def _paint_bcc(rng: np.random.Generator, cv: _Canvas, geo: _Geometry, conc: np.ndarray) -> str:
    variant = _pick(rng, {"nodular": 0.45, "pigmented": 0.3, "superficial": 0.25})
    m = geo.mask
    conc[_HB] += rng.uniform(0.12, 0.35) * m * _mottle(rng, cv, 0.2)
    conc[_WHITE] += rng.uniform(0.05, 0.22) * m
    conc[_MEL] += rng.uniform(0.0, 0.15) * m
    if variant == "superficial":
        vessels = _vessel_tree(rng, cv, geo, int(rng.integers(3, 7)), 0.006, rng.uniform(0.2, 0.4), 1)
        conc[_HB] += rng.uniform(0.8, 1.5) * vessels * m
        erosion = _globules(rng, cv, geo, int(rng.integers(0, 5)), 0.025, 0.3)
        conc[_HB] += 0.8 * erosion * m
        conc[_MEL] += 0.4 * erosion * m
        conc[_BG] += 0.8 * _globules(rng, cv, geo, int(rng.integers(0, 6)), 0.012, 0.3) * m
        return variant
    n_trees = int(rng.integers(2, 6)) if variant == "nodular" else int(rng.integers(0, 3))
    vessels = _vessel_tree(rng, cv, geo, n_trees, rng.uniform(0.009, 0.016), rng.uniform(0.8, 1.4), 3)
    conc[_HB] += rng.uniform(1.5, 2.5) * vessels * m
    if variant == "pigmented" or rng.uniform() < 0.35:
        n = int(rng.integers(5, 15)) if variant == "pigmented" else int(rng.integers(2, 6))
        xs, ys = _points_in_lesion(rng, geo, n, 0.1, 0.85)
        nests = np.clip(_splat_sizes(cv, xs, ys, rng.uniform(0.7, 1.0, n), rng.uniform(0.025, 0.06, n)), 0, 1) * m
        conc[_BG] += rng.uniform(0.8, 1.5) * nests
        conc[_MEL] += 0.35 * nests
    if variant == "pigmented":
        conc[_MEL] += 1.4 * _globules(rng, cv, geo, int(rng.integers(5, 20)), 0.012, 0.4) * m
    if rng.uniform() < 0.25:
        ulcer = _smoothstep(_coarse_noise(rng, cv.size, 4) + geo.rho, -1.6, -0.9) * m
        conc[_HB] += 1.0 * ulcer
        conc[_MEL] += 0.5 * ulcer
    if rng.uniform() < 0.3:
        lines = np.exp(-(_bandpass_noise(rng, cv.size, max(0.6, 0.02 * cv.px_per_unit)) / 0.3) ** 2)
        shiny = np.clip(2 * lines - 1, 0, 1) * _smoothstep(_coarse_noise(rng, cv.size, 3), 0.0, 1.0)
        conc[_WHITE] += 0.4 * shiny * m
    return variant


def _paint_akiec(rng: np.random.Generator, cv: _Canvas, geo: _Geometry, conc: np.ndarray) -> str:
    variant = _pick(rng, {"erythematous": 0.6, "pigmented": 0.25, "hypertrophic": 0.15})
    m = geo.mask
    conc[_HB] += rng.uniform(0.3, 0.7) * _mottle(rng, cv, 0.25) * m
    follicles = np.clip(1 - _network(rng, cv, rng.uniform(0.07, 0.11), 0.2), 0, 1)
    conc[_WHITE] += rng.uniform(0.2, 0.45) * follicles * m
    conc[_HB] += rng.uniform(0.1, 0.25) * (1 - follicles) * m
    if variant == "pigmented":
        conc[_MEL] += rng.uniform(0.5, 1.1) * (1 - follicles) * m
        conc[_BG] += 0.2 * m
    lo = rng.uniform(-0.2, 0.8) if variant != "hypertrophic" else rng.uniform(-1.5, -0.8)
    scale_zone = _smoothstep(_coarse_noise(rng, cv.size, 4), lo, lo + 1.0)
    rough = np.clip(_bandpass_noise(rng, cv.size, max(0.5, 0.012 * cv.px_per_unit)), 0, None)
    conc[_WHITE] += rng.uniform(0.3, 0.75) * scale_zone * np.clip(0.4 + 0.5 * rough, 0, 1) * m
    if rng.uniform() < 0.5:
        conc[_HB] += 0.9 * _globules(rng, cv, geo, int(rng.integers(20, 60)), 0.007, 0.2) * m
    return variant


def _paint_vasc(rng: np.random.Generator, cv: _Canvas, geo: _Geometry, conc: np.ndarray) -> str:
    variant = _pick(rng, {"red": 0.4, "purple": 0.25, "thrombosed": 0.2, "angiokeratoma": 0.15})
    m = geo.mask
    lac = _lacunae(rng, cv, geo, int(rng.integers(15, 45)), (0.15 * geo.r0, 0.4 * geo.r0)) * m
    conc[_HB] += rng.uniform(0.3, 0.6) * m
    conc[_WHITE] += rng.uniform(0.1, 0.3) * (1 - lac) * m
    strength = rng.uniform(0.9, 1.8)
    if variant == "red":
        conc[_HB] += strength * lac
    elif variant == "purple":
        conc[_DEOXY] += strength * 0.8 * lac
        conc[_HB] += 0.4 * lac
    else:
        conc[_DEOXY] += strength * lac
        conc[_MEL] += rng.uniform(0.4, 1.2) * lac
        conc[_BG] += 0.4 * lac
    if variant == "angiokeratoma":
        veil = _smoothstep(_coarse_noise(rng, cv.size, 3), 0.0, 1.0) * m
        conc[_WHITE] += 0.35 * veil
        conc[_HB] += 0.8 * _globules(rng, cv, geo, int(rng.integers(1, 4)), 0.04, 0.3) * m
    return variant


_PAINTERS: dict[str, _Painter] = {
    "akiec": _paint_akiec, "bcc": _paint_bcc, "bkl": _paint_bkl, "df": _paint_df,
    "mel": _paint_mel, "nv": _paint_nv, "vasc": _paint_vasc}


# ----------------------------------------------------------------------------------------------
# Lesions, patients, images
# ----------------------------------------------------------------------------------------------
@dataclass
class _Lesion:
    """One lesion on its patch of skin: packed canvas reflectance (RGB), hairiness, patient metadata."""

    dx: str
    variant: str
    packed: np.ndarray
    hairiness: float
    meta: dict


def _sample_patient(rng: np.random.Generator, dx: str) -> dict:
    """Fitzpatrick type (independent of class), sex, age and body site (mildly class-dependent)."""
    spec = _SPECS[dx]
    fitz = int(rng.choice(6, p=FITZPATRICK_WEIGHTS / FITZPATRICK_WEIGHTS.sum())) + 1
    age = int(np.clip(5 * round(rng.normal(spec.age_mean, 14) / 5), 5, 90))
    loc_w = np.asarray(spec.loc_weights, dtype=float)
    return {"fitzpatrick": fitz, "sex": "male" if rng.uniform() < spec.p_male else "female", "age": age,
            "localization": LOCALIZATIONS[int(rng.choice(len(LOCALIZATIONS), p=loc_w / loc_w.sum()))]}


def _make_lesion(rng: np.random.Generator, cv: _Canvas, dx: str) -> _Lesion:
    """Draw a patient and a lesion of class ``dx`` and render it on skin into the lesion canvas."""
    spec = _SPECS[dx]
    patient = _sample_patient(rng, dx)
    fitz = patient["fitzpatrick"]
    geo = _make_geometry(rng, cv, spec, rng.uniform(*spec.radius))
    conc = np.zeros((5, cv.size, cv.size))
    variant = _PAINTERS[dx](rng, cv, geo, conc)
    # Pigment density varies a lot between lesions, independently of class, and is higher on
    # darker skin; this (with skin tone and nuisances) washes class information out of mean colour.
    density = rng.lognormal(0.0, 0.35) * (0.8 + 0.1 * (fitz - 1))
    conc[:4] *= density
    od = np.einsum("kc,kij->cij", _OD, conc[:4]) + _skin_od(rng, cv)
    white = np.clip(conc[_WHITE], 0.0, 0.95)
    skin = np.clip(_SKIN_RGB[fitz - 1] * np.exp(rng.normal(0, 0.04, 3) + rng.normal(0, 0.06)), 0.02, 1.0)
    white_rgb = np.array([0.95, 0.92, 0.86]) * np.array([1.0, 1.0, rng.uniform(0.85, 1.05)])
    white_rgb = np.clip(white_rgb * (0.75 + 0.25 * skin.mean() / _SKIN_RGB[0].mean()), 0, 1)
    # Beer-Lambert absorption by the chromophores, then an opaque white/yellow blend on top.
    rgb = skin[:, None, None] * np.exp(-od) * (1 - white) + white * white_rgb[:, None, None]
    hairy = rng.uniform() < (0.55 if patient["sex"] == "male" else 0.3)
    meta = dict(patient, lesion_radius=round(geo.r0, 4), variant=variant)
    return _Lesion(dx, variant, _pack_rgb(rgb), rng.uniform(2, 14) if hairy else 0.0, meta)


def _image_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image-plane pixel-centre coordinates x, y (S, S) float32 in (-1, 1)."""
    c = (-1 + (np.arange(size) + 0.5) * 2 / size).astype(np.float32)
    y, x = np.meshgrid(c, c, indexing="ij")
    return x, y


def _sample_nuisances(rng: np.random.Generator, hairiness: float) -> dict:
    """Per-image acquisition parameters, all independent of the class (hair count via the patient)."""
    vignetting = float(rng.uniform(0.3, 1.0)) if rng.uniform() < 0.75 else 0.0
    return {
        "rotation_deg": float(rng.uniform(0, 360)),
        "scale": float(rng.uniform(0.88, 1.12)),
        "shift_x": float(rng.normal(0, 0.06)),
        "shift_y": float(rng.normal(0, 0.06)),
        "hair": int(rng.poisson(hairiness)) if hairiness > 0 else 0,
        "vignetting": vignetting,
        "vignetting_radius": float(rng.uniform(0.85, 1.3)),
        "illumination": float(rng.lognormal(0.0, 0.14)),
        "illumination_gradient": float(rng.uniform(0.0, 0.3)),
        "illumination_angle_deg": float(rng.uniform(0, 360)),
        "white_balance": float(rng.normal(0.0, 1.0)),
        "noise_sigma": float(rng.uniform(0.004, 0.02)),
        "jpeg_quality": int(rng.integers(60, 96)) if rng.uniform() < 0.5 else 0,
    }


def _pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(3, C, C) -> (C*C,) complex128 whose 16 bytes hold one pixel's RGB + padding as float32.

    Gathering one 16-byte element per pixel is much faster than gathering channels separately.
    """
    flat = np.zeros((rgb.shape[1] * rgb.shape[2], 4), dtype=np.float32)
    flat[:, :3] = rgb.reshape(3, -1).T
    return flat.view(np.complex128).ravel()


def _mirror(c: np.ndarray, size: int) -> np.ndarray:
    """Reflect pixel coordinates into [0, size - 1) (mirror boundary; one reflection per side)."""
    np.abs(c, out=c)
    np.minimum(c, np.float32(2 * (size - 1)) - c, out=c)
    return np.clip(c, 0, np.float32(size - 1.001), out=c)


def _warp_rgb(packed: np.ndarray, cv: _Canvas, grid: tuple[np.ndarray, np.ndarray], nz: dict) -> np.ndarray:
    """Bilinearly resample packed lesion RGB into image space (S, S, 4) under rotation/scale/shift.

    Samples outside the canvas are mirrored back into it (plain textured skin there).
    """
    x, y = grid
    theta = math.radians(nz["rotation_deg"])
    k = cv.px_per_unit / nz["scale"]
    cos, sin = math.cos(theta) * k, math.sin(theta) * k
    x0, y0 = nz["shift_x"], nz["shift_y"]
    off = _CANVAS_EXTENT * cv.px_per_unit
    col = cos * x + sin * y + np.float32(off - cos * x0 - sin * y0)
    row = cos * y - sin * x + np.float32(off - cos * y0 + sin * x0)
    col, row = _mirror(col, cv.size), _mirror(row, cv.size)
    fr, fc = (row - np.floor(row))[..., None], (col - np.floor(col))[..., None]
    i00 = row.astype(np.intp) * cv.size + col.astype(np.intp)

    def gather(i: np.ndarray) -> np.ndarray:
        return packed[i].view(np.float32).reshape(i.shape + (4,))

    a, b = gather(i00), gather(i00 + 1)
    top = a + (b - a) * fc
    a, b = gather(i00 + cv.size), gather(i00 + cv.size + 1)
    bottom = a + (b - a) * fc
    return top + (bottom - top) * fr


def _skin_od(rng: np.random.Generator, cv: _Canvas) -> np.ndarray:
    """Skin texture as optical density (3, C, C): fine grain, mottling, faint furrows, erythema."""
    fine = ndimage.gaussian_filter(rng.standard_normal((cv.size, cv.size)), 0.7)
    fine /= fine.std() + 1e-8
    mottle = _coarse_noise(rng, cv.size, 6)
    furrow = np.exp(-(_bandpass_noise(rng, cv.size, max(0.8, 0.07 * cv.px_per_unit)) / 0.25) ** 2)
    shade = rng.uniform(0.5, 1.5) * (0.025 * fine + 0.035 * mottle - 0.035 * furrow)
    ery = np.clip(_coarse_noise(rng, cv.size, 3), 0, None) * rng.uniform(0.0, 0.25)
    return -shade[None] + 0.5 * ery[None] * _OD[2][:, None, None]


def _hair_field(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    """Dark thin curved hairs (S, S) in [0, 1] as quadratic Bezier curves."""
    if n == 0:
        return np.zeros((size, size))
    rows, cols = [], []
    ppu = size / 2.0
    for _ in range(n):
        p0 = rng.uniform(-1.3, 1.3, 2)
        ang = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.5, 2.2)
        p2 = p0 + length * np.array([math.cos(ang), math.sin(ang)])
        p1 = (p0 + p2) / 2 + rng.normal(0, 0.25 * length, 2)
        t = np.linspace(0, 1, max(4, int(length * ppu * 2)))[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
        rows.append((pts[:, 1] + 1) * ppu - 0.5)
        cols.append((pts[:, 0] + 1) * ppu - 0.5)
    return _polyline_field(size, np.concatenate(rows), np.concatenate(cols), rng.uniform(0.004, 0.008) * ppu)


def _render_image(rng: np.random.Generator, lesion: _Lesion, cv: _Canvas,
                  grid: tuple[np.ndarray, np.ndarray], nz: dict) -> np.ndarray:
    """Composite one image (S, S, 3) uint8 of ``lesion`` under nuisances ``nz``."""
    size = grid[0].shape[0]
    x, y = grid
    img = np.ascontiguousarray(_warp_rgb(lesion.packed, cv, grid, nz)[..., :3])
    if nz["hair"]:
        hair = (_hair_field(rng, size, nz["hair"]) * rng.uniform(0.7, 1.0)).astype(np.float32)[..., None]
        hair_rgb = np.array([0.07, 0.05, 0.04]) if rng.uniform() < 0.9 else np.array([0.75, 0.72, 0.68])
        img = img * (1 - hair) + hair * hair_rgb.astype(np.float32)
    img *= _light_field(x, y, nz)[..., None]
    img *= np.array([1 + 0.06 * nz["white_balance"], 1.0, 1 - 0.06 * nz["white_balance"]], np.float32)
    img += np.float32(nz["noise_sigma"] * math.sqrt(12)) * (rng.random(img.shape, dtype=np.float32) - 0.5)
    out = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    if nz["jpeg_quality"]:
        out = _jpeg_roundtrip(out, nz["jpeg_quality"])
    return out


def _light_field(x: np.ndarray, y: np.ndarray, nz: dict) -> np.ndarray:
    """Brightness x linear illumination gradient x dermoscope vignette (S, S) float32."""
    ang = math.radians(nz["illumination_angle_deg"])
    g = nz["illumination"] * nz["illumination_gradient"]
    light = np.float32(nz["illumination"]) + np.float32(g * math.cos(ang)) * x + np.float32(g * math.sin(ang)) * y
    r2 = x * x + y * y
    rr = np.sqrt(r2)
    ring = 1 / (1 + np.exp(np.clip((np.float32(nz["vignetting_radius"]) - rr) / np.float32(0.035), -40, 40)))
    v = np.float32(nz["vignetting"])
    return light * (1 - v * ring) * (1 - np.float32(0.2) * v * r2)


def _jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode/decode (S, S, 3) uint8 as JPEG in memory (Pillow's libjpeg; deterministic per version)."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def _allocate_class_counts(n_lesions: int, min_per_class: int) -> dict[str, int]:
    """Lesions per class: proportional to HAM10000 (largest remainder) with a floor of ``min_per_class``."""
    if min_per_class * len(SYNTHDERM_CLASSES) > n_lesions:
        raise ValueError(f"n_lesions={n_lesions} cannot give {len(SYNTHDERM_CLASSES)} classes "
                         f"min_lesions_per_class={min_per_class} each; lower min_lesions_per_class")
    fixed: dict[str, int] = {}
    free = list(SYNTHDERM_CLASSES)
    while True:
        remaining = n_lesions - sum(fixed.values())
        total = sum(HAM10000_CLASS_COUNTS[c] for c in free)
        shares = {c: remaining * HAM10000_CLASS_COUNTS[c] / total for c in free}
        low = [c for c in free if shares[c] < min_per_class]
        if not low:
            break
        for c in low:
            fixed[c] = min_per_class
            free.remove(c)
    counts = {c: int(math.floor(s)) for c, s in shares.items()}
    order = sorted(free, key=lambda c: (-(shares[c] - counts[c]), -HAM10000_CLASS_COUNTS[c]))
    for c in order[: remaining - sum(counts.values())]:
        counts[c] += 1
    counts.update(fixed)
    return {c: counts[c] for c in SYNTHDERM_CLASSES}


LESIONS_PER_JOB = 25  # lesions per task when rendering in processes (~0.3 s of work at 128 px)


def generate_synthderm(seed: int = 0, n_lesions: int = 600, image_size: int = 128,
                       images_per_lesion: tuple[int, int] = (1, 4), min_lesions_per_class: int = 12,
                       workers: int | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """Render a SynthDerm data set.

    Returns ``(images, meta)``: images uint8 (N, image_size, image_size, 3); meta has N rows in the
    same order with ``image_id``, ``lesion_id`` (the group), ``dx``, ``label`` (index into
    SYNTHDERM_CLASSES), ``fitzpatrick`` (1..6), ``sex``, ``age``, ``localization``, ``variant``,
    ``lesion_radius`` and the nuisance parameters used (``rotation_deg``, ``scale``, ``shift_x``,
    ``shift_y``, ``hair`` (hair count), ``vignetting``, ``vignetting_radius``, ``illumination``,
    ``illumination_gradient``, ``illumination_angle_deg``, ``white_balance``, ``noise_sigma``,
    ``jpeg_quality`` (0 = none)). Each lesion has ``images_per_lesion`` (inclusive range) images.

    ``workers`` processes render runs of lesions in parallel (default: ``default_workers()``, none
    on <= 2 cores); every lesion has its own random stream, so the result does not depend on it.
    Like DataLoader workers they start from the fork server (``benchmark.workers``): a script that
    renders with workers needs the ``if __name__ == "__main__":`` guard.
    """
    lo, hi = images_per_lesion
    if not (1 <= lo <= hi) or image_size < 16 or n_lesions < 1:
        raise ValueError(f"bad arguments: images_per_lesion={images_per_lesion}, image_size={image_size}, "
                         f"n_lesions={n_lesions}")
    t0 = time.perf_counter()
    counts = _allocate_class_counts(n_lesions, min_lesions_per_class)
    root = np.random.SeedSequence(seed)
    assign_seq, *lesion_seqs = root.spawn(n_lesions + 1)
    dxs = np.repeat(np.array(SYNTHDERM_CLASSES), [counts[c] for c in SYNTHDERM_CLASSES])
    dxs = np.random.Generator(np.random.PCG64(assign_seq)).permutation(dxs)
    lesions = [(i, str(dx), seq) for i, (dx, seq) in enumerate(zip(dxs, lesion_seqs))]
    if workers is None:
        from benchmark.device import default_workers
        workers = default_workers()
    workers = max(1, min(int(workers), n_lesions // LESIONS_PER_JOB))
    if workers == 1:
        rendered = _render_lesions((image_size, lo, hi, lesions))
    else:
        from concurrent.futures import ProcessPoolExecutor

        from benchmark.workers import worker_context
        jobs = [(image_size, lo, hi, lesions[start:start + LESIONS_PER_JOB])
                for start in range(0, n_lesions, LESIONS_PER_JOB)]
        with ProcessPoolExecutor(workers, mp_context=worker_context()) as pool:
            rendered = [item for part in pool.map(_render_lesions, jobs) for item in part]
    images = [image for image, _ in rendered]
    rows = [{"image_id": f"SD_{k:06d}", **row} for k, (_, row) in enumerate(rendered)]
    meta = pd.DataFrame(rows)
    log.info("SynthDerm: %d lesions, %d images at %dpx in %.1fs (seed=%d, %d process%s)", n_lesions, len(meta),
             image_size, time.perf_counter() - t0, seed, workers, "" if workers == 1 else "es")
    return np.stack(images), meta


def _render_lesions(job: tuple[int, int, int, list]) -> list[tuple[np.ndarray, dict]]:
    """Images and their metadata rows (no ``image_id`` yet) of ``lesions`` [(index, dx, SeedSequence)], in order."""
    image_size, lo, hi, lesions = job
    cv = _make_canvas(image_size)
    grid = _image_grid(image_size)
    out: list[tuple[np.ndarray, dict]] = []
    for i, dx, seq in lesions:
        lesion_seq, *image_seqs = seq.spawn(hi + 1)
        rng = np.random.Generator(np.random.PCG64(lesion_seq))
        n_img = int(rng.integers(lo, hi + 1))
        lesion = _make_lesion(rng, cv, dx)
        for j in range(n_img):
            img_rng = np.random.Generator(np.random.PCG64(image_seqs[j]))
            nz = _sample_nuisances(img_rng, lesion.hairiness)
            out.append((_render_image(img_rng, lesion, cv, grid, nz),
                        {"lesion_id": f"SDL_{i:05d}", "dx": dx, "label": SYNTHDERM_CLASSES.index(dx),
                         **lesion.meta, **nz}))
    return out
