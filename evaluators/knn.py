"""Weighted k-nearest-neighbour classifier on frozen pooled features.

Protocol (InstDisc / DINO-style weighted kNN, the DESIGN parity default): features are
L2-normalised, similarity is the cosine (a dot product), each of the k most similar neighbours
votes for its class with weight ``exp(sim / T)`` (T = 0.07), and the class probabilities are the
normalised vote masses, so AUROC is defined. Neighbours come from the train split only by default
(``neighbours="train+val"`` adds val; val is never needed for a choice here, and test never enters
the pool). Every k in ``ks`` is computed from one top-k search; the record's plain metric names
(``balanced_accuracy``, ``auroc``, ...) hold ``primary_k`` (20) and the other ks are stored as
``<metric>@k<k>`` with their own bootstrap CIs.

Multi-label datasets (features.y a 0/1 [N, L] matrix): the same neighbours and weights give, per
finding, the weighted share of neighbours with that finding (one-vs-rest kNN per finding); AUC is
the mean over findings and ACC the mean label accuracy at 0.5 (MedMNIST's definitions).
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.features import Features
from benchmark.metrics import evaluate_scores, subgroup_metrics
from benchmark.options import Choice, Float, Int, ListOf, member_of
from benchmark.predictions import image_predictions
from evaluators.base import EvalContext, EvalOutput, EvaluatorSpec
from evaluators.registry import EVALUATORS

log = logging.getLogger(__name__)

KNN_DEFAULTS = {
    "ks": [10, 20],
    "primary_k": 20,
    "temperature": 0.07,
    "neighbours": "train",  # or "train+val"
    "chunk_size": 1024,  # queries per similarity block
    "n_boot": 1000,
}
KNN_SCHEMA = {
    "ks": ListOf(Int(min=1)), "primary_k": Int(min=1), "temperature": Float(min=1e-4),  # below, float32 (s - s_max) / T is 0/0
    "neighbours": Choice("train", "train+val"), "chunk_size": Int(min=1), "n_boot": Int(min=1),
}


def knn_class_probabilities(train_x: torch.Tensor, train_y: torch.Tensor, query_x: torch.Tensor, n_classes: int,
                            ks: list[int], temperature: float, chunk_size: int = 1024) -> dict[int, np.ndarray]:
    """Temperature-weighted kNN vote shares for several k from one top-k search.

    Args:
        train_x: [N, D] neighbour features; train_y: [N] int64 labels in [0, n_classes).
        query_x: [M, D] query features (same device as train_x).
        ks: neighbour counts (each <= N); temperature: T in exp(cosine / T).
    Returns:
        {k: float64 [M, n_classes] class probabilities (rows sum to 1)}.
    """
    train_y = train_y.long()
    out = {k: np.empty((query_x.shape[0], n_classes), dtype=np.float64) for k in ks}
    for start, top_index, weights in _weighted_neighbours(train_x, query_x, ks, temperature, chunk_size):
        labels = train_y[top_index]  # [m, k_max]
        for k in ks:
            votes = torch.zeros(len(top_index), n_classes, dtype=torch.float64, device=weights.device)
            votes.scatter_add_(1, labels[:, :k], weights[:, :k])
            out[k][start:start + len(top_index)] = (votes / votes.sum(1, keepdim=True)).cpu().numpy()
    return out


def knn_finding_scores(train_x: torch.Tensor, train_targets: torch.Tensor, query_x: torch.Tensor, ks: list[int],
                       temperature: float, chunk_size: int = 1024) -> dict[int, np.ndarray]:
    """Multi-label kNN: per finding, the weighted share of the k neighbours that have it.

    Args:
        train_targets: 0/1 [N, L] findings of the neighbours; the rest as :func:`knn_class_probabilities`.
    Returns:
        {k: float64 [M, L] scores in [0, 1]} (one-vs-rest kNN per finding, the same neighbours for all).
    """
    targets = train_targets.double()
    out = {k: np.empty((query_x.shape[0], targets.shape[1]), dtype=np.float64) for k in ks}
    for start, top_index, weights in _weighted_neighbours(train_x, query_x, ks, temperature, chunk_size):
        neighbour_targets = targets[top_index]  # [m, k_max, L]
        for k in ks:
            mass = (weights[:, :k, None] * neighbour_targets[:, :k]).sum(1)  # [m, L]
            out[k][start:start + len(top_index)] = (mass / weights[:, :k].sum(1, keepdim=True)).cpu().numpy()
    return out


def _weighted_neighbours(train_x: torch.Tensor, query_x: torch.Tensor, ks: list[int], temperature: float,
                         chunk_size: int):
    """Per chunk of queries: (start, indices [m, k_max] of the most similar neighbours, most similar first,
    float64 weights exp((cos - cos_max) / T) [m, k_max])."""
    if min(ks) < 1 or max(ks) > train_x.shape[0]:
        raise ValueError(f"every k must lie in 1..{train_x.shape[0]} (the neighbour pool), got {ks}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    train = F.normalize(train_x.float(), dim=1)
    k_max = max(ks)
    for start in range(0, query_x.shape[0], chunk_size):
        queries = F.normalize(query_x[start:start + chunk_size].float(), dim=1)
        similarity = queries @ train.T  # [m, N]
        top_sim, top_index = similarity.topk(k_max, dim=1)  # sorted, most similar first
        # exp((s - s_max) / T): the shift cancels in the normalisation and keeps exp() finite
        yield start, top_index, torch.exp((top_sim - top_sim[:, :1]) / temperature).double()


def _check_options(options: dict) -> tuple[list[int], int]:
    ks = sorted({int(k) for k in (options["ks"] if isinstance(options["ks"], (list, tuple)) else [options["ks"]])})
    primary_k = int(options["primary_k"])
    if not ks or ks[0] < 1:
        raise ValueError(f"knn: ks must be positive integers, got {options['ks']}")
    if primary_k not in ks:
        raise ValueError(f"knn: primary_k={primary_k} must be one of ks={ks} (e.g. -o primary_k={ks[-1]})")
    if options["neighbours"] not in ("train", "train+val"):
        raise ValueError(f"knn: neighbours must be 'train' or 'train+val', got {options['neighbours']!r}")
    return ks, primary_k


def neighbour_pool(context: EvalContext, which: str) -> Features:
    train = context.features("train")
    if which == "train":
        return train
    val = context.features("val")
    return Features(np.concatenate([train.x, val.x]), np.concatenate([train.y, val.y]),
                    np.concatenate([train.ids, val.ids]), np.concatenate([train.groups, val.groups]),
                    np.concatenate([train.indices, val.indices]), train.meta)


def run_knn(context: EvalContext, options: dict) -> EvalOutput:
    ks, primary_k = _check_options(options)
    pool, test = neighbour_pool(context, options["neighbours"]), context.features("test")
    if ks[-1] > len(pool):
        raise ValueError(f"knn: k={ks[-1]} exceeds the {len(pool)} images of the neighbour pool "
                         f"({options['neighbours']}); use smaller ks (-o ks=[...])")
    device = context.device
    multilabel = np.ndim(pool.y) == 2
    train_x, test_x = torch.as_tensor(pool.x, device=device), torch.as_tensor(test.x, device=device)
    if multilabel:
        probabilities = knn_finding_scores(train_x, torch.as_tensor(pool.y, device=device), test_x, ks,
                                           float(options["temperature"]), int(options["chunk_size"]))
    else:
        probabilities = knn_class_probabilities(train_x, torch.as_tensor(pool.y, device=device), test_x,
                                                context.dataset.num_classes, ks, float(options["temperature"]),
                                                int(options["chunk_size"]))
    n_boot = int(options["n_boot"])
    metrics = evaluate_scores(test.y, probabilities[primary_k], n_boot=n_boot, seed=context.seed)
    for k in ks:
        if k != primary_k:
            for name, entry in evaluate_scores(test.y, probabilities[k], n_boot=n_boot, seed=context.seed).items():
                metrics[f"{name}@k{k}"] = entry
    subgroups = subgroup_metrics(test.y, probabilities[primary_k], context.dataset.subgroups(test.indices),
                                 seed=context.seed)
    return EvalOutput(
        metrics=metrics, primary_metric=context.primary_metric(), subgroups=subgroups,
        resolved={"k": primary_k, "ks": ks, "temperature": float(options["temperature"]),
                  "neighbour_pool": options["neighbours"], "n_neighbour_pool": int(len(pool)),
                  "n_test": int(len(test)), "similarity": "cosine (L2-normalised features)",
                  **({"multilabel": "one-vs-rest per finding: weighted share of neighbours with it"} if multilabel
                     else {})},
        cost=context.feature_cost(),
        predictions=None if multilabel else image_predictions(test.ids, test.y, probabilities[primary_k],
                                                               context.dataset.subgroups(test.indices), k=primary_k))


EVALUATORS.add("knn", EvaluatorSpec(
    name="knn", run=run_knn, defaults=KNN_DEFAULTS, option_schema=KNN_SCHEMA, option_rules=(member_of("primary_k", "ks"),),
    presets={"quick": {"n_boot": 500}},
    description="temperature-weighted cosine kNN on frozen features (k 10/20, T 0.07; neighbours from train)",
    benchmark_preset="default", order=20, multilabel=True))
