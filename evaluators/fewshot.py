"""Episodic few-shot evaluation: a prototypical classifier on frozen pooled features.

Parity protocol (ANTON/ERIC-T ``few_shot.py``, PROTOCOLS.md 1.1): no training; in each N-way
K-shot episode the prototype of a class is the mean of its K support features, queries
(15 per class) go to the nearest prototype in squared Euclidean distance, on the raw GAP features
(no L2 normalisation). 600 episodes, K in {5, 20}, N = min(5, classes); the score is the mean
episode accuracy with the 95 % interval mean +- 1.96 sd / sqrt(episodes) (sd with ddof 0, as
ANTON's ``np.std``).

Differences from ANTON, on purpose: support and queries come from the *test split only* (ANTON
concatenates train and test), and a class with fewer than K + Q test images cannot fill an episode,
so it is excluded from sampling for that K (logged, and listed in ``resolved``); N is then
min(n_way, eligible classes). A K with fewer than 2 eligible classes is skipped (recorded); a run
where every K is skipped is an error.

Episodes are batched tensor work: all episodes' indices are drawn from a seeded CPU generator (so
CPU and GPU runs pick the same episodes), then features are gathered as [E, N, K+Q, D] in chunks
bounded by ``max_chunk_mb`` and prototypes and distances are computed in batched matmuls.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch

from benchmark.options import Float, Int, ListOf, member_of
from benchmark.predictions import episode_predictions, fingerprint_of
from benchmark.records import metric
from evaluators.base import EvalContext, EvalOutput, EvaluatorSpec
from evaluators.registry import EVALUATORS

log = logging.getLogger(__name__)

FEWSHOT_DEFAULTS = {
    "shots": [5, 20],
    "primary_shots": 20,  # ANTON uses 20-shot everywhere
    "n_way": 5,
    "n_query": 15,
    "episodes": 600,
    "max_chunk_mb": 256,  # bound on the gathered [E, N, K+Q, D] block
}
FEWSHOT_SCHEMA = {
    "shots": ListOf(Int(min=1)), "primary_shots": Int(min=1), "n_way": Int(min=2), "n_query": Int(min=1),
    "episodes": Int(min=1), "max_chunk_mb": Float(min=0, min_open=True),
}
_SAMPLING_BLOCK = 100  # episodes drawn per generator call (fixed so results never depend on memory settings)


def episode_seed(seed: int, shots: int) -> int:
    """Independent, reproducible generator seed for each (run seed, K)."""
    return int(np.random.SeedSequence([int(seed), int(shots), 0x5E7]).generate_state(1, np.uint64)[0] >> 1)


def sample_episodes(labels: np.ndarray, classes: list[int], n_way: int, per_class: int, episodes: int,
                    seed: int) -> torch.Tensor:
    """Positions into ``labels`` for every episode: int64 [E, n_way, per_class].

    Each episode picks ``n_way`` distinct classes uniformly from ``classes`` (ANTON's
    ``randperm(n_classes)[:n_way]``) and, for each, ``per_class`` distinct images uniformly; the
    first K of a class's row are its support, the rest its queries. Every class in ``classes``
    must have >= ``per_class`` images.
    """
    members = [np.flatnonzero(labels == c) for c in classes]
    counts = torch.tensor([len(m) for m in members])
    if int(counts.min()) < per_class:
        raise ValueError(f"every sampled class needs >= {per_class} images, got counts {counts.tolist()}")
    if not 1 <= n_way <= len(classes):
        raise ValueError(f"n_way must lie in 1..{len(classes)}, got {n_way}")
    table = torch.zeros(len(classes), int(counts.max()), dtype=torch.int64)
    for row, m in enumerate(members):
        table[row, : len(m)] = torch.from_numpy(m)
    invalid = torch.arange(table.shape[1])[None, :] >= counts[:, None]  # [C, max_n] padding
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty(episodes, n_way, per_class, dtype=torch.int64)
    for start in range(0, episodes, _SAMPLING_BLOCK):
        e = min(_SAMPLING_BLOCK, episodes - start)
        chosen = torch.rand(e, len(classes), generator=generator).argsort(dim=1)[:, :n_way]  # [e, N]
        keys = torch.rand(e, n_way, table.shape[1], generator=generator)
        keys.masked_fill_(invalid[chosen], 2.0)  # padding never drawn
        slots = keys.topk(per_class, dim=2, largest=False).indices  # [e, N, K+Q] distinct member slots
        out[start:start + e] = table[chosen[..., None], slots]
    return out


def episode_accuracies(x: torch.Tensor, positions: torch.Tensor, shots: int, max_chunk_mb: float = 256) -> torch.Tensor:
    """Prototypical-network accuracy of each episode.

    Args:
        x: [M, D] features (on the compute device); positions: [E, N, K+Q] rows of ``x``
            (support first); shots: K.
    Returns:
        float64 [E] fraction of queries whose nearest prototype (squared Euclidean) is their class.
    """
    e_total, n_way, per_class = positions.shape
    n_query = per_class - shots
    # Centre once: distances are translation invariant, and the matmul expansion below loses less
    # precision on centred features.
    x = (x.double() - x.double().mean(0)).to(torch.float32)
    bytes_per_episode = n_way * per_class * x.shape[1] * 4
    chunk = max(1, int(max_chunk_mb * 2**20 // bytes_per_episode))
    target = torch.arange(n_way, device=x.device).repeat_interleave(n_query)  # [N*Q]
    out = torch.empty(e_total, dtype=torch.float64)
    for start in range(0, e_total, chunk):
        block = positions[start:start + chunk].to(x.device)
        e = block.shape[0]
        features = x[block]  # [e, N, K+Q, D]
        prototypes = features[:, :, :shots].mean(2)  # [e, N, D]
        queries = features[:, :, shots:].reshape(e, n_way * n_query, -1)  # [e, N*Q, D]
        distances = ((queries * queries).sum(-1, keepdim=True)
                     - 2 * queries @ prototypes.transpose(1, 2)
                     + (prototypes * prototypes).sum(-1)[:, None, :])  # [e, N*Q, N]
        correct = distances.argmin(-1) == target
        out[start:start + e] = correct.double().mean(1).cpu()
    return out


def eligible_classes(labels: np.ndarray, n_classes: int, per_class: int) -> tuple[list[int], dict[int, int]]:
    """Classes with >= per_class images, and {class: count} of those excluded (present but too small)."""
    counts = np.bincount(labels, minlength=n_classes)
    keep = [c for c in range(n_classes) if counts[c] >= per_class]
    excluded = {c: int(counts[c]) for c in range(n_classes) if 0 < counts[c] < per_class}
    return keep, excluded


def run_few_shot(x: torch.Tensor, labels: np.ndarray, n_classes: int, shots: int, n_way: int, n_query: int,
                 episodes: int, seed: int, max_chunk_mb: float = 256) -> tuple[np.ndarray, dict]:
    """All episodes of one K: (accuracies [E], facts incl. ``positions`` [E, N, K+Q]). ValueError when < 2 classes qualify."""
    per_class = shots + n_query
    classes, excluded = eligible_classes(labels, n_classes, per_class)
    if len(classes) < 2:
        raise ValueError(f"{shots}-shot episodes need >= 2 classes with >= {per_class} images (K + {n_query} queries); "
                         f"class counts: {np.bincount(labels, minlength=n_classes).tolist()}")
    way = min(n_way, len(classes))
    positions = sample_episodes(labels, classes, way, per_class, episodes, episode_seed(seed, shots))
    accuracies = episode_accuracies(x, positions, shots, max_chunk_mb).numpy()
    return accuracies, {"n_way": way, "eligible_classes": classes, "excluded_classes": excluded, "positions": positions}


def _summary(accuracies: np.ndarray) -> dict:
    mean, sd = float(accuracies.mean()), float(accuracies.std())  # ddof 0, as ANTON
    half = 1.96 * sd / math.sqrt(len(accuracies))
    return metric(mean, (mean - half, mean + half), sd=sd, n_episodes=int(len(accuracies)))


def _check_options(options: dict) -> list[int]:
    shots = options["shots"] if isinstance(options["shots"], (list, tuple)) else [options["shots"]]
    shots = sorted({int(k) for k in shots})
    if not shots or shots[0] < 1:
        raise ValueError(f"fewshot: shots must be positive integers, got {options['shots']}")
    if int(options["primary_shots"]) not in shots:
        raise ValueError(f"fewshot: primary_shots={options['primary_shots']} must be one of shots={shots}")
    for key in ("n_way", "n_query", "episodes"):
        if int(options[key]) < 1:
            raise ValueError(f"fewshot: {key} must be >= 1, got {options[key]}")
    if int(options["n_way"]) < 2:
        raise ValueError("fewshot: n_way must be >= 2")
    return shots


def run_fewshot(context: EvalContext, options: dict) -> EvalOutput:
    shots_list = _check_options(options)
    test = context.features("test")
    names = context.dataset.classes
    x = torch.as_tensor(test.x, device=context.device)
    metrics, per_shots, skipped, episodes = {}, {}, {}, {}
    for shots in shots_list:
        try:
            accuracies, facts = run_few_shot(x, test.y, context.dataset.num_classes, shots, int(options["n_way"]),
                                             int(options["n_query"]), int(options["episodes"]), context.seed,
                                             float(options["max_chunk_mb"]))
        except ValueError as error:
            log.warning("fewshot: skipping %d-shot: %s", shots, error)
            skipped[str(shots)] = str(error)
            continue
        if facts["excluded_classes"]:
            log.warning("fewshot %d-shot: classes %s have fewer than %d test images and are excluded from sampling",
                        shots, {names[c]: n for c, n in facts["excluded_classes"].items()}, shots + int(options["n_query"]))
        metrics[f"accuracy@{shots}shot"] = _summary(accuracies)
        episodes[shots] = episode_predictions(accuracies, fingerprint_of(test.ids[facts["positions"].numpy()]), shots=shots)
        per_shots[str(shots)] = {"n_way": facts["n_way"], "eligible_classes": [names[c] for c in facts["eligible_classes"]],
                                 "excluded_classes": {names[c]: n for c, n in facts["excluded_classes"].items()}}
    if not metrics:
        raise ValueError(f"fewshot: no K in {shots_list} can be run on the test split of '{context.dataset.name}' "
                         f"({'; '.join(skipped.values())}); lower n_query or shots (-o n_query=5)")
    primary_shots = int(options["primary_shots"])
    if f"accuracy@{primary_shots}shot" not in metrics:
        primary_shots = max(int(k) for k in per_shots)
        log.warning("fewshot: primary %s-shot could not run; reporting %d-shot as primary",
                    options["primary_shots"], primary_shots)
    metrics["accuracy"] = dict(metrics[f"accuracy@{primary_shots}shot"])
    return EvalOutput(
        metrics=metrics, primary_metric="accuracy",
        resolved={"primary_shots": primary_shots, "per_shots": per_shots, "skipped_shots": skipped,
                  "n_query": int(options["n_query"]), "episodes": int(options["episodes"]), "split": "test",
                  "n_test": int(len(test)), "classifier": "prototypes, squared Euclidean, raw features"},
        cost=context.feature_cost(), predictions=episodes[primary_shots])


EVALUATORS.add("fewshot", EvaluatorSpec(
    name="fewshot", run=run_fewshot, defaults=FEWSHOT_DEFAULTS, option_schema=FEWSHOT_SCHEMA,
    option_rules=(member_of("primary_shots", "shots"),),
    presets={"quick": {"episodes": 200}},
    description="prototypical N-way K-shot episodes on frozen features, test split only (ANTON parity: 600 episodes, Q 15)",
    benchmark_preset="default", order=30, aliases=("few-shot",)))
