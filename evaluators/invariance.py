"""Invariance probes: ``invariance`` (synthetic transformations) and ``multiview-invariance`` (natural pairs).

``invariance`` follows ERIC-I ``eval_synthetic_invariance.py`` / ANTON ``invariances.py`` with the
seed code's bugs fixed (PROTOCOLS.md section 2): encoder in eval mode under inference_mode;
Ledoit-Wolf covariance instead of a raw covariance plus ridge; images sampled without replacement;
identity parameters excluded from every mean; grids for any k; 95 % t-intervals over images.
Per-transform similarities are the record's metrics (``rotation``, ``hflip``, ...; distances as
``<transform>_distance``) and the primary metric is their mean, ``mean_similarity``.

``multiview-invariance`` scores pairs of different images of one lesion/patient from the cached
features (no forward pass), beside random pairs from different groups.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import time

import numpy as np
import torch

from benchmark.features import Features, extract_features
from benchmark.intervals import mean_metric
from benchmark.options import AnyOf, Bool, Choice, Float, Int, ListOf, MapOf
from evaluators.base import EvalContext, EvalOutput, EvaluatorSpec
from evaluators.probe_common import PROBE_SPLITS, loader_workers, sample_rows, split_rows
from evaluators.registry import EVALUATORS
from invariances.multiview import different_group_pairs, same_group_pairs
from invariances.probe import run_invariance, total_items
from invariances.transforms import ALL_TRANSFORMS, ViewGeometry, build_grids
from invariances.whitening import Whitening
from pretrained.encoder import Encoder

log = logging.getLogger(__name__)

QUICK_TRANSFORMS = ["rotation", "hflip", "translation", "scale", "brightness", "contrast", "hue", "blur"]

INVARIANCE_DEFAULTS = {
    "transforms": list(ALL_TRANSFORMS),
    "k": 256,  # grid points per continuous transform (int, or {transform: k}); ERIC-I default
    "num_images": 100,  # images transformed (ANTON 100, ERIC-I 1000), drawn without replacement
    "split": "all",  # where the images come from: train | val | test | all
    "stats_split": "all",  # where mean/covariance come from (cached features)
    "resize_ratio": None,  # None: the encoder's own resize/crop; 256/224: ERIC-I's Resize(256) + CenterCrop(224)
    "interpolation": "nearest",  # rotation/translation/scale/shear resampling (torchvision default, as ERIC-I)
    "chunk": 64,  # views per forward pass
    "elastic_seed": 0,
    "figures": True,
}

INVARIANCE_SCHEMA = {
    "transforms": ListOf(Choice(*ALL_TRANSFORMS), unique=True),
    "k": AnyOf(Int(min=1), MapOf(Choice(*ALL_TRANSFORMS), Int(min=1))),
    "num_images": Int(min=1, nullable=True), "split": Choice(*PROBE_SPLITS), "stats_split": Choice(*PROBE_SPLITS),
    "resize_ratio": Float(min=1, nullable=True), "interpolation": Choice("nearest", "bilinear"), "chunk": Int(min=1),
    "elastic_seed": Int(min=0), "figures": Bool(),
}


def _k_only_for_run_transforms(options: dict) -> str | None:
    extra = sorted(set(options["k"]) - set(options["transforms"])) if isinstance(options.get("k"), dict) else []
    return f"option 'k' names transforms that are not run: {extra} (transforms={options['transforms']})" if extra else None


INVARIANCE_PRESETS = {
    "parity": {"resize_ratio": 256 / 224},
    "small": {"k": 8, "num_images": 20},
    "quick": {"transforms": QUICK_TRANSFORMS, "k": 4, "num_images": 8, "figures": True},
}


def probe_geometry(encoder: Encoder, resize_ratio: float | None) -> ViewGeometry:
    """The encoder's preprocessing, optionally with the seed's resize/crop ratio."""
    pre = encoder.preprocessing
    if resize_ratio is not None:
        if resize_ratio < 1:
            raise ValueError(f"resize_ratio must be >= 1 (resize side / crop side), got {resize_ratio}")
        pre = dataclasses.replace(pre, resize_size=int(round(pre.input_size * resize_ratio)))
    return ViewGeometry(pre)


def statistics_features(context: EvalContext, geometry: ViewGeometry, split: str) -> Features:
    """Features for the whitening statistics, through the probe's geometry (cached on disk).

    With the encoder's own geometry these are the run's cached features; with another
    ``resize_ratio`` they are extracted (and cached) under that preprocessing.
    """
    encoder = context.encoder()
    if geometry.preprocessing == encoder.preprocessing:
        features = context.all_features()
    else:
        view_encoder = copy.copy(encoder)  # shares the weights; only the preprocessing differs
        view_encoder.preprocessing = geometry.preprocessing
        features = extract_features(view_encoder, context.dataset, device=context.device,
                                    batch_size=context.extraction.batch_size,
                                    num_workers=context.extraction.num_workers, cache_dir=context.extraction.cache_dir)
    return features if split == "all" else features.select(split_rows(context, split))


def _example_figure(context: EvalContext, grids, geometry: ViewGeometry, row: int) -> str:
    from evaluators.probe_figures import save_transform_examples
    image = context.dataset.load_image(int(row))
    views = [("clean", np.asarray(geometry.crop(geometry.resize(image)), dtype=np.float32) / 255.0)]
    for grid in grids:
        index = grid.active[-1]
        param = grid.params[index]
        label = f"{grid.name}\n{_short(param)}"
        views.append((label, np.asarray(grid.view_image(image, index, geometry).convert("RGB"), dtype=np.float32) / 255.0))
    path = save_transform_examples(views, context.artifacts_dir / "transform_examples.png",
                                   f"{context.encoder_spec.name}: strongest parameter of each transform")
    return str(path)


def _short(param) -> str:
    if isinstance(param, (tuple, list)):
        return "(" + ", ".join(_short(p) for p in param) + ")"
    if isinstance(param, float):
        return f"{param:.3g}"
    return str(param)


def run_invariance_probe(context: EvalContext, options: dict) -> EvalOutput:
    """The ``invariance`` probe; ``resolved`` holds only encoder-independent protocol facts (it enters
    the protocol hash, so encoders stay comparable); encoder facts go to ``extra["encoder_facts"]``."""
    encoder = context.encoder()
    names = list(options["transforms"])
    grids = build_grids(names, options["k"], options["interpolation"], int(options["elastic_seed"]))
    for grid in grids:
        if not grid.active:
            raise ValueError(f"transform '{grid.name}' with k={len(grid.params)} has only identity points; raise k")
    geometry = probe_geometry(encoder, options["resize_ratio"])
    stats = statistics_features(context, geometry, options["stats_split"])
    whitening = Whitening.fit(stats.x)
    rows = sample_rows(context, options["split"], options["num_images"], context.seed)
    chunk = int(options["chunk"])
    n_items = total_items(len(rows), grids, chunk)
    progress = context.progress(f"invariance {encoder.name}", n_items) if context.progress else None
    run = run_invariance(encoder, context.dataset, rows, grids, whitening, geometry, context.device, chunk=chunk,
                         num_workers=loader_workers(context, n_items), progress=progress)
    metrics, curves = {}, {}
    similarity_by_transform, distance_by_transform = [], []
    for grid in grids:
        scores = run.scores[grid.name]
        similarity, distance = scores.per_image("similarity"), scores.per_image("distance")
        similarity_by_transform.append(similarity)
        distance_by_transform.append(distance)
        metrics[grid.name] = mean_metric(similarity, n_params=len(grid.active))
        metrics[f"{grid.name}_distance"] = mean_metric(distance, n_params=len(grid.active))
        curves[grid.name] = {"similarity": scores.per_parameter("similarity"),
                             "distance": scores.per_parameter("distance"), "identity": list(grid.identity)}
    metrics["mean_similarity"] = mean_metric(np.mean(similarity_by_transform, axis=0), n_transforms=len(grids))
    metrics["mean_distance"] = mean_metric(np.mean(distance_by_transform, axis=0), n_transforms=len(grids))
    extra = {"detail_metrics": names, "curves": curves,
             "encoder_facts": {"whitening": whitening.describe(), "geometry": geometry.preprocessing.to_dict()}}
    if options["figures"]:
        extra["figures"] = [_example_figure(context, grids, geometry, rows[0])]
    seconds = run.seconds
    return EvalOutput(
        metrics=metrics, primary_metric="mean_similarity",
        resolved={"grids": {g.name: g.describe() for g in grids}, "n_images": int(len(rows)),
                  "image_ids": context.dataset.ids[rows].tolist(), "stats_split": options["stats_split"],
                  "statistics": "Ledoit-Wolf mean/covariance of the dataset features",
                  "n_views": run.n_views, "ci": "95% Student-t over images",
                  "averaging": "per image: mean over non-identity parameters; then mean over images"},
        extra=extra,
        cost={"images_per_second": run.n_views / max(seconds, 1e-9), "seconds": seconds, "views": run.n_views})


MULTIVIEW_DEFAULTS = {
    "split": "all",  # rows the pairs come from
    "stats_split": "all",
    "max_pairs": 1000,  # one pair per group, at most this many groups (sampled without replacement)
    "same_label_only": True,  # ANTON's EyePACS pairs keep equal grades
}
MULTIVIEW_SCHEMA = {"split": Choice(*PROBE_SPLITS), "stats_split": Choice(*PROBE_SPLITS),
                    "max_pairs": Int(min=1, nullable=True), "same_label_only": Bool()}


def run_multiview(context: EvalContext, options: dict) -> EvalOutput:
    start = time.perf_counter()
    features = context.all_features()
    stats = features if options["stats_split"] == "all" else features.select(split_rows(context, options["stats_split"]))
    whitening = Whitening.fit(stats.x)
    rows = split_rows(context, options["split"])
    dataset = context.dataset
    max_pairs = options["max_pairs"]
    pairs = same_group_pairs(dataset.groups, dataset.labels, rows, context.seed,
                             None if max_pairs is None else int(max_pairs), bool(options["same_label_only"]))
    reference = different_group_pairs(dataset.groups, rows, len(pairs), context.seed)
    position = {int(i): p for p, i in enumerate(features.indices)}

    def scored(pair_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.as_tensor(features.x[[position[int(r)] for r in pair_rows.ravel()]]).reshape(len(pair_rows), 2, -1)
        return whitening.similarity(x[:, 0], x[:, 1]).numpy(), whitening.distance(x[:, 0], x[:, 1]).numpy()

    same_sim, same_dist = scored(pairs)
    other_sim, other_dist = scored(reference)
    metrics = {"multiview_similarity": mean_metric(same_sim), "multiview_distance": mean_metric(same_dist),
               "different_group_similarity": mean_metric(other_sim), "different_group_distance": mean_metric(other_dist)}
    seconds = time.perf_counter() - start
    return EvalOutput(
        metrics=metrics, primary_metric="multiview_similarity",
        resolved={"n_pairs": int(len(pairs)),
                  "pairs": "one seeded pair of different images per group" + (", same label" if options["same_label_only"] else ""),
                  "reference": "as many random pairs of images from different groups", "ci": "95% Student-t over pairs"},
        extra={"detail_metrics": list(metrics), "encoder_facts": {"whitening": whitening.describe()}},
        cost={**context.feature_cost(), "seconds": seconds})


EVALUATORS.add("invariance", EvaluatorSpec(
    name="invariance", run=run_invariance_probe, defaults=INVARIANCE_DEFAULTS, presets=INVARIANCE_PRESETS,
    option_schema=INVARIANCE_SCHEMA, option_rules=(_k_only_for_run_transforms,),
    description="invariance to 18 transformations: cosine similarity of Ledoit-Wolf Mahalanobis-whitened "
                "features f(x) vs f(Tx), identity excluded (ERIC-I/ANTON, bugs fixed)",
    benchmark_preset="quick", order=60, kind="probe", multilabel=True))  # label-free: multi-label datasets are fine

EVALUATORS.add("multiview-invariance", EvaluatorSpec(
    name="multiview-invariance", run=run_multiview, defaults=MULTIVIEW_DEFAULTS, option_schema=MULTIVIEW_SCHEMA,
    presets={"quick": {"max_pairs": 300}},
    description="multi-view invariance: whitened cosine similarity of two images of one lesion/patient "
                "(ANTON invariances_multiview), beside random different-group pairs",
    benchmark_preset="quick", order=61, kind="probe"))
