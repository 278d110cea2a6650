"""PNG figures of the probes (matplotlib's Agg canvas, no pyplot state), written atomically."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    figure.savefig(tmp, format="png", bbox_inches="tight")
    os.replace(tmp, path)
    return path


def save_png(array: np.ndarray, path: Path) -> Path:
    """Save an RGB image [H, W, 3] in [0, 1] (or uint8) as PNG, atomically."""
    from PIL import Image
    array = np.asarray(array)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    """``np.savez_compressed`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def _hide_axes(axis) -> None:
    axis.set_xticks([])
    axis.set_yticks([])


def save_transform_examples(views: Sequence[tuple[str, np.ndarray]], path: Path, title: str) -> Path:
    """One row of example views: (label, RGB [H, W, 3] in [0, 1])."""
    n = len(views)
    cols = min(n, 6)
    rows = (n + cols - 1) // cols
    figure = _figure(2.0 * cols, 2.2 * rows + 0.4)
    for position, (label, image) in enumerate(views):
        axis = figure.add_subplot(rows, cols, position + 1)
        axis.imshow(image)
        axis.set_title(label, fontsize=8)
        _hide_axes(axis)
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def save_saliency_grid(images: np.ndarray, maps: dict[str, np.ndarray], scores: dict[str, np.ndarray], path: Path,
                       title: str, boxes: Sequence[tuple[float, float, float, float] | None] | None = None) -> Path:
    """Rows = images; columns = image, then per method its heatmap and overlay.

    Args:
        images: [N, H, W, 3] in [0, 1]; maps: method -> [N, H, W]; scores: method -> [N] attentive
            diffusion (shown in the titles); boxes: per image a lesion box (x0, y0, x1, y1) in map pixels.
    """
    from matplotlib.patches import Rectangle
    n = len(images)
    methods = list(maps)
    cols = 1 + 2 * len(methods)
    figure = _figure(2.0 * cols, 2.1 * n + 0.5)
    for i in range(n):
        axis = figure.add_subplot(n, cols, i * cols + 1)
        axis.imshow(images[i])
        if boxes is not None and boxes[i] is not None:
            x0, y0, x1, y1 = boxes[i]
            axis.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1.2))
        axis.set_title("image" if i == 0 else "", fontsize=8)
        _hide_axes(axis)
        for m, method in enumerate(methods):
            heat = maps[method][i]
            heat_axis = figure.add_subplot(n, cols, i * cols + 2 + 2 * m)
            heat_axis.imshow(heat, cmap="jet")
            heat_axis.set_title(f"{method}\nAD {scores[method][i]:.1f}", fontsize=7)
            _hide_axes(heat_axis)
            overlay_axis = figure.add_subplot(n, cols, i * cols + 3 + 2 * m)
            overlay_axis.imshow(images[i].mean(axis=2), cmap="gray")
            overlay_axis.imshow(heat, cmap="jet", alpha=0.6)
            overlay_axis.set_title("overlay" if i == 0 else "", fontsize=8)
            _hide_axes(overlay_axis)
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def save_reconstruction_grid(originals: np.ndarray, reconstructions: np.ndarray, labels: Sequence[str], path: Path,
                             title: str) -> Path:
    """Pairs (original | reconstruction), one row per image; arrays [N, H, W, 3] in [0, 1]."""
    n = len(originals)
    figure = _figure(4.2, 2.1 * n + 0.5)
    for i in range(n):
        for c, (image, name) in enumerate(((originals[i], "image"), (reconstructions[i], labels[i]))):
            axis = figure.add_subplot(n, 2, 2 * i + c + 1)
            axis.imshow(np.clip(image, 0.0, 1.0))
            axis.set_title(name, fontsize=8)
            _hide_axes(axis)
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)
