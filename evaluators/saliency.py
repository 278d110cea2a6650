"""``saliency``: label-free occlusion saliency (and optional class saliency) with attentive diffusion.

Protocol (ANTON ``saliency.py``, bugs fixed, PROTOCOLS.md section 3): encoder in eval mode; N images
(default 20, drawn without replacement from the test split) instead of one fixed image; occlusion
with captum, windows batched; the summary score "attentive diffusion" = percentage of map pixels
above the map's mean, reported as the mean over images with a 95 % t-interval. With ``margin`` the
network sees the image at ``S + 2 (window - 1)`` (ANTON: 242 for 224 and window 10) and the map is its
central ``S x S``, where every pixel is covered by the same number of windows. Parity
(``--preset parity``: window 10, stride 1) costs ``(S + window - 1)^2`` forward passes per image
(54,289 at 224): the default stride 5 costs 25x less and, as 5 divides 10, still covers every pixel
equally. Where the dataset gives lesion boxes (``dataset.lesion_box``), the share of saliency inside
the box is reported beside the box's share of the image (the value a uniform map would get).

Class saliency (``class_methods``: integrated-gradients, grad-cam) explains ``head(encoder(x))`` for
the image's label: the head is a linear probe fitted on the cached train features (C chosen on
val, as ``linear``) or loaded from ``head_checkpoint``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmark.intervals import mean_metric
from benchmark.options import Bool, Choice, ExistingPath, Float, Int, ListOf
from evaluators.base import EvalContext, EvalOutput, EvaluatorSpec
from evaluators.probe_common import PROBE_SPLITS, frozen, sample_rows
from evaluators.registry import EVALUATORS
from evaluators.saliency_methods import (CLASS_METHODS, attentive_diffusion, box_share, box_to_input, class_saliency,
                                         occlusion_map, windows_per_image)

log = logging.getLogger(__name__)

SALIENCY_DEFAULTS = {
    "num_images": 20,
    "split": "test",
    "window": 10,  # occlusion patch side (px at the encoder's input size)
    "stride": 5,  # parity: 1 (54,289 forward passes per 224 image)
    "baseline": 0.0,  # patch value in normalised space (0 = the channel mean)
    "margin": True,  # network input S + 2 (window - 1), map = central S x S (ANTON's 242 -> 224)
    "perturbations_per_eval": 64,  # occluded copies per forward pass
    "class_methods": [],  # any of "integrated-gradients", "grad-cam"
    "head_checkpoint": None,  # torch file {"weight": [C, D], "bias": [C]} (+ optional "encoder": state dict)
    "head_wd_steps": 12,  # linear-probe head: wd grid logspace(-6, 5, steps), chosen on val
    "ig_steps": 32,
    "figure_images": 8,
}

SALIENCY_SCHEMA = {
    "num_images": Int(min=1, nullable=True), "split": Choice(*PROBE_SPLITS), "window": Int(min=1), "stride": Int(min=1),
    "baseline": Float(), "margin": Bool(), "perturbations_per_eval": Int(min=1),
    "class_methods": ListOf(Choice(*CLASS_METHODS), min_len=0, unique=True),
    "head_checkpoint": ExistingPath("file", nullable=True), "head_wd_steps": Int(min=1), "ig_steps": Int(min=1),
    "figure_images": Int(min=0),
}

SALIENCY_PRESETS = {
    "parity": {"stride": 1},
    "class": {"class_methods": list(CLASS_METHODS)},
    # main job (~128 px): 16 px tiles (64 windows per image, every pixel covered once) on 6 images
    "quick": {"num_images": 6, "window": 16, "stride": 16, "margin": False, "figure_images": 4},
}


def load_head(path: str, encoder: nn.Module, feature_dim: int, n_classes: int) -> nn.Linear:
    """A linear head from a torch file {"weight": [C, D], "bias": [C], optional "encoder": state dict}.

    An ``encoder`` entry (a fine-tuned encoder) is loaded strictly into ``encoder`` in place.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"head_checkpoint {file} does not exist")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "weight" not in state or "bias" not in state:
        raise ValueError(f"head_checkpoint {file} must hold a dict with 'weight' [C, D] and 'bias' [C] "
                         f"(and optionally 'encoder', a state dict of the fine-tuned encoder)")
    weight, bias = state["weight"], state["bias"]
    if tuple(weight.shape) != (n_classes, feature_dim) or tuple(bias.shape) != (n_classes,):
        raise ValueError(f"head_checkpoint {file}: weight {tuple(weight.shape)} / bias {tuple(bias.shape)} do not "
                         f"match ({n_classes} classes, {feature_dim}-d features)")
    if "encoder" in state:
        encoder.load_state_dict(state["encoder"], strict=True)
    head = nn.Linear(feature_dim, n_classes)
    with torch.no_grad():
        head.weight.copy_(weight.float())
        head.bias.copy_(bias.float())
    return head


def fit_probe_head(context: EvalContext, wd_steps: int) -> tuple[nn.Linear, dict]:
    """Linear-probe head on the cached train features, C chosen on val (the ``linear`` protocol)."""
    from evaluators.linear import LINEAR_DEFAULTS, fit_and_score, resolved_max_iter
    from evaluators.linear_solver import fit_logistic
    train, val = context.features("train"), context.features("val")
    n_classes = context.dataset.num_classes
    options = {**LINEAR_DEFAULTS, "wd_steps": int(wd_steps)}
    selection = context.primary_metric()
    best_c, _ = fit_and_score(train.x, train.y, val.x, val.y, n_classes, options, selection, torch.device("cpu"))
    fit = fit_logistic(torch.as_tensor(train.x, dtype=torch.float64), torch.as_tensor(train.y), n_classes, best_c,
                       max_iter=resolved_max_iter(options))
    head = nn.Linear(train.x.shape[1], n_classes)
    with torch.no_grad():
        head.weight.copy_(fit.weight.float())
        head.bias.copy_(fit.bias.float().clamp_min(-1e4))  # absent classes: -inf -> very negative
    return head, {"source": "linear probe on train features", "C": best_c, "selection_metric": selection,
                  "converged": fit.converged}


def _unit_image(preprocessing, image, crop: int, size: int) -> np.ndarray:
    unit = preprocessing.to_unit_tensor(image)
    return unit[:, crop:crop + size, crop:crop + size].permute(1, 2, 0).numpy()


def run_saliency(context: EvalContext, options: dict) -> EvalOutput:
    encoder = context.encoder()
    device = context.device
    window, stride = int(options["window"]), int(options["stride"])
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got window={window}, stride={stride}")
    methods = list(options["class_methods"])
    unknown = [m for m in methods if m not in CLASS_METHODS]
    if unknown:
        raise ValueError(f"unknown class_methods {unknown}; choose from {CLASS_METHODS}")
    base = encoder.preprocessing
    size = base.input_size
    if window > size:
        raise ValueError(f"occlusion window {window} is larger than the image ({size} px, the encoder's input size)")
    margin = window - 1 if options["margin"] else 0
    occlusion_pre = base.with_input_size(size + 2 * margin) if margin else base
    rows = sample_rows(context, options["split"], options["num_images"], context.seed)
    head, head_info = None, {}
    if methods:
        if options["head_checkpoint"]:
            encoder = context.fresh_encoder()  # the checkpoint may replace the encoder's weights
            head = load_head(options["head_checkpoint"], encoder, encoder.feature_dim, context.dataset.num_classes)
            head_info = {"source": str(options["head_checkpoint"])}
        else:
            head, head_info = fit_probe_head(context, int(options["head_wd_steps"]))
        head = head.to(device).eval()
    maps: dict[str, list[torch.Tensor]] = {"occlusion": [], **{m: [] for m in methods}}
    shown, boxes, box_scores = [], [], {name: [] for name in maps}
    start = time.perf_counter()
    progress = context.progress(f"saliency {encoder.name}", len(rows)) if context.progress else None
    encoder.to(device)
    with frozen(encoder):
        for row in rows:
            image = context.dataset.load_image(int(row))
            x = occlusion_pre(image).to(device)
            full = occlusion_map(encoder, x, window, stride, float(options["baseline"]),
                                 int(options["perturbations_per_eval"]))
            maps["occlusion"].append(full[margin:margin + size, margin:margin + size])
            shown.append(_unit_image(occlusion_pre, image, margin, size))
            target = torch.tensor([int(context.dataset.labels[row])])
            for method in methods:  # same input as the occlusion, so all maps are aligned
                class_map = class_saliency(encoder, head, x.unsqueeze(0), target, method, ig_steps=int(options["ig_steps"]))
                maps[method].append(class_map[0, margin:margin + size, margin:margin + size])
            box = context.dataset.lesion_box(int(row))
            if box is not None:
                x0, y0, x1, y1 = (v - margin for v in box_to_input(box, image.size, occlusion_pre))
                box = tuple(float(min(max(v, 0.0), size)) for v in (x0, y0, x1, y1))
                for name in maps:
                    box_scores[name].append(box_share(maps[name][-1], box))
            boxes.append(box)
            if progress is not None:
                progress(1)
    seconds = time.perf_counter() - start
    stacked = {name: torch.stack(values) for name, values in maps.items()}
    diffusion = {name: attentive_diffusion(values) for name, values in stacked.items()}
    metrics = {"attentive_diffusion": mean_metric(diffusion["occlusion"], unit="percent")}
    for method in methods:
        metrics[f"{_key(method)}_attentive_diffusion"] = mean_metric(diffusion[method], unit="percent")
    n_boxes = sum(b is not None for b in boxes)
    if n_boxes:
        for name, pairs in box_scores.items():
            prefix = "" if name == "occlusion" else f"{_key(name)}_"
            metrics[f"{prefix}lesion_saliency_share"] = mean_metric([p[0] for p in pairs])
        metrics["lesion_area_share"] = mean_metric([p[1] for p in box_scores["occlusion"]])
    figures = _figures(context, rows, stacked, diffusion, np.stack(shown), boxes, int(options["figure_images"]))
    n_windows = windows_per_image(size + 2 * margin, window, stride)
    return EvalOutput(
        metrics=metrics, primary_metric="attentive_diffusion",
        resolved={"n_images": int(len(rows)), "image_ids": context.dataset.ids[rows].tolist(),
                  "n_images_with_lesion_box": n_boxes, "head": head_info.get("source"),
                  "class_target": "the image's label" if methods else None,
                  "attentive_diffusion": "100 x share of map pixels above the map's mean (percent)",
                  "ci": "95% Student-t over images"},
        extra={"detail_metrics": list(metrics), "figures": figures,
               "per_image_attentive_diffusion": {k: v.tolist() for k, v in diffusion.items()},
               "encoder_facts": {"occlusion_input_size": size + 2 * margin, "map_size": size,
                                 "windows_per_image": n_windows, "head": head_info}},
        cost={"images_per_second": len(rows) * (n_windows + 1) / max(seconds, 1e-9), "seconds": seconds,
              "maps_per_second": len(rows) / max(seconds, 1e-9)})


def _key(method: str) -> str:
    return {"integrated-gradients": "ig", "grad-cam": "gradcam"}.get(method, method)


def _figures(context: EvalContext, rows: np.ndarray, maps: dict[str, torch.Tensor], diffusion: dict[str, np.ndarray],
             images: np.ndarray, boxes: list, n_show: int) -> list[str]:
    from evaluators.probe_figures import save_npz, save_saliency_grid
    out = context.artifacts_dir
    arrays = {name.replace("-", "_"): values.numpy() for name, values in maps.items()}
    save_npz(out / "saliency_maps.npz", image_ids=context.dataset.ids[rows].astype(str), **arrays)
    n = min(n_show, len(images))
    path = save_saliency_grid(images[:n], {k: v[:n].numpy() for k, v in maps.items()},
                              {k: v[:n] for k, v in diffusion.items()}, out / "saliency_grid.png",
                              f"{context.encoder_spec.name} on {context.dataset.name}", boxes[:n])
    return [str(path), str(out / "saliency_maps.npz")]


EVALUATORS.add("saliency", EvaluatorSpec(
    name="saliency", run=run_saliency, defaults=SALIENCY_DEFAULTS, presets=SALIENCY_PRESETS,
    option_schema=SALIENCY_SCHEMA,
    description="label-free occlusion saliency on feature distance (captum), attentive diffusion over N images; "
                "optional Integrated Gradients / Grad-CAM of a linear head (ANTON saliency.py, bugs fixed)",
    benchmark_preset="quick", order=70, kind="probe"))
