"""Saliency maps through captum: label-free occlusion on feature distance, and class saliency
(Integrated Gradients, Grad-CAM) of an encoder with a linear head; plus their summary scores.

captum is imported lazily (inside the functions), so the rest of the harness works without it.

* Occlusion (Ericsson et al. CVPR'21, ANTON ``saliency.py``): a ``window x window`` patch of
  ``baseline`` (0 in normalised space = the channel mean) slides over the image with ``stride``;
  each window scores ``||f(x) - f(x_occ)|| / ||f(x)||`` and a pixel's saliency is the mean score of
  the windows covering it. captum's ``Occlusion`` computes exactly that with forward function
  ``-||f(x) - f(x0)|| / ||f(x0)||`` (its attribution is ``F(x0) - F(x_occ)``, averaged over the
  covering windows); ``perturbations_per_eval`` windows go through the encoder per forward pass.
* Attentive diffusion (ANTON): percentage (x 100) of the map's pixels above the map's mean.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
from torch import nn

from pretrained.encoder import Encoder, EncoderWithHead
from pretrained.preprocessing import Preprocessing

log = logging.getLogger(__name__)

CLASS_METHODS = ("integrated-gradients", "grad-cam")


class MissingDependencyError(ValueError):
    """An optional package a probe needs is not installed."""


def captum_attr():
    """``captum.attr``, or one clear error saying how to install it."""
    try:
        import captum.attr
    except ImportError as error:
        missing = getattr(error, "name", None) or ""
        if missing and not missing.startswith("captum"):  # captum.attr imports matplotlib, tqdm, packaging
            raise MissingDependencyError(f"captum is installed but `import captum.attr` failed: {error}; install "
                                         f"'{missing.split('.')[0]}' (a captum dependency)") from None
        raise MissingDependencyError(
            f"saliency maps need captum ({error}); install it with `pip install captum==0.9.0` "
            f"(or from a wheel on offline machines)") from None
    return captum.attr


@torch.inference_mode()
def occlusion_map(encoder: Encoder, image: torch.Tensor, window: int, stride: int, baseline: float = 0.0,
                  perturbations_per_eval: int = 64) -> torch.Tensor:
    """Label-free occlusion saliency of one image.

    Args:
        encoder: in eval mode, on the image's device.
        image: normalised network input [3, H, W].
        window, stride: square occlusion patch side and step (pixels).
        baseline: value the patch is filled with (in normalised space).
    Returns:
        [H, W] float32 (CPU): mean over covering windows of ||f(x) - f(x_occ)|| / ||f(x)||; pixels no
        window covers (right/bottom border when (H - window) % stride != 0) are 0.
    """
    attr = captum_attr()
    if window > min(image.shape[-2:]):
        raise ValueError(f"occlusion window {window} is larger than the image ({tuple(image.shape[-2:])})")
    x = image.unsqueeze(0)
    rows = max(1, int(perturbations_per_eval)) + 1

    def negative_distance(batch: torch.Tensor) -> torch.Tensor:
        # Every forward pass has the same batch size and carries the clean image as its last row, so
        # f(x) and f(x_occ) see identical arithmetic: windows that change nothing score exactly 0.
        n = batch.shape[0]
        if n == 1 and torch.equal(batch, x):  # captum's initial evaluation: the distance to itself is 0
            return torch.zeros(1, device=batch.device)
        features = encoder(torch.cat([batch, x.expand(rows - n, -1, -1, -1)])).float()
        reference = features[-1:]
        scale = torch.linalg.vector_norm(reference, dim=1).clamp_min(1e-12)
        return -torch.linalg.vector_norm(features[:n] - reference, dim=1) / scale

    occlusion = attr.Occlusion(negative_distance)
    maps = occlusion.attribute(x, sliding_window_shapes=(x.shape[1], window, window),
                               strides=(x.shape[1], stride, stride), baselines=baseline,
                               perturbations_per_eval=perturbations_per_eval)
    return maps[0, 0].float().cpu()


def windows_per_image(size: int, window: int, stride: int) -> int:
    """Forward passes of one occlusion map on a ``size x size`` input."""
    per_axis = (size - window) // stride + 1
    return per_axis * per_axis


def class_saliency(encoder: Encoder, head: nn.Linear, images: torch.Tensor, targets: torch.Tensor, method: str,
                   ig_steps: int = 32, internal_batch_size: int = 32) -> torch.Tensor:
    """Class saliency of ``head(encoder(x))`` for the ``targets`` logits.

    Args:
        images: normalised inputs [N, 3, H, W] (on the encoder's device); targets: int [N].
        method: "integrated-gradients" (baseline 0 in normalised space, ``ig_steps`` Riemann steps,
            map = |sum over channels|) or "grad-cam" (on the encoder's last spatial map,
            the output of ``encoder.trunk``; ReLU; bilinearly upsampled to H x W; CNN trunks only).
    Returns:
        [N, H, W] float32 (CPU), non-negative.
    """
    attr = captum_attr()
    model = EncoderWithHead(encoder, head).eval()
    x = images.detach().clone().requires_grad_(True)
    targets = targets.to(images.device)
    with torch.enable_grad():
        if method == "integrated-gradients":
            ig = attr.IntegratedGradients(model)
            maps = ig.attribute(x, baselines=torch.zeros_like(x), target=targets, n_steps=ig_steps,
                                internal_batch_size=internal_batch_size)
            maps = maps.sum(dim=1).abs()
        elif method == "grad-cam":
            with torch.no_grad():
                spatial = encoder.trunk(images[:1].detach())
            if spatial.dim() != 4:  # e.g. ViT trunks return tokens
                raise ValueError(f"grad-cam needs a trunk that outputs a spatial map [N, C, h, w]; encoder "
                                 f"'{encoder.name}' gives shape {tuple(spatial.shape)}; use integrated-gradients")
            cam = attr.LayerGradCam(model, encoder.trunk)
            maps = cam.attribute(x, target=targets, relu_attributions=True)
            maps = attr.LayerAttribution.interpolate(maps, tuple(images.shape[-2:]), "bilinear")[:, 0]
        else:
            raise ValueError(f"unknown class saliency method '{method}'; choose from {CLASS_METHODS}")
    return maps.detach().float().cpu()


def attentive_diffusion(maps: torch.Tensor | np.ndarray) -> np.ndarray:
    """[N, H, W] -> [N]: 100 x share of pixels strictly above the map's mean (ANTON, in percent)."""
    m = torch.as_tensor(maps, dtype=torch.float64)
    mean = m.mean(dim=(-2, -1), keepdim=True)
    return (100.0 * (m > mean).double().mean(dim=(-2, -1))).numpy()


def box_to_input(box: Sequence[float], image_size: tuple[int, int], preprocessing: Preprocessing) -> tuple[float, float, float, float]:
    """Map a lesion box from the loaded image's pixels to the network input's pixels.

    Args:
        box: (x0, y0, x1, y1) pixel edges in the image returned by ``load_image`` (x1, y1 exclusive).
        image_size: that image's (width, height).
    Returns:
        (x0, y0, x1, y1) in the ``input_size`` crop, clipped to it (may be empty).
    """
    width, height = image_size
    size = preprocessing.input_size
    if preprocessing.resize_size is None:
        sx, sy, left, top = size / width, size / height, 0, 0
    else:
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = preprocessing.resize_size, int(preprocessing.resize_size * long / short)
        new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        sx, sy = new_w / width, new_h / height
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    x0, y0, x1, y1 = box
    clip = lambda v: float(min(max(v, 0.0), size))
    return clip(x0 * sx - left), clip(y0 * sy - top), clip(x1 * sx - left), clip(y1 * sy - top)


def box_mask(box: Sequence[float], height: int, width: int) -> torch.Tensor:
    """[H, W] bool: pixels whose centre lies inside (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    ys = torch.arange(height, dtype=torch.float64) + 0.5
    xs = torch.arange(width, dtype=torch.float64) + 0.5
    return ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]


def box_share(saliency: torch.Tensor, box: Sequence[float]) -> tuple[float, float]:
    """(share of |saliency| inside the box, share of the pixels inside the box) for one [H, W] map."""
    mask = box_mask(box, *saliency.shape[-2:])
    weights = saliency.abs().double()
    total = float(weights.sum())
    inside = float(weights[mask].sum())
    return (inside / total if total > 0 else float("nan")), float(mask.double().mean())
