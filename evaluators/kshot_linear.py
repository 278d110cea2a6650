"""k-shot linear probe: the linear probe of :mod:`evaluators.linear` trained on k images per class.

The low-data regime of the seed studies. For each k in ``ks`` and each of ``seeds`` support draws,
k labelled images per class are drawn from the *train split only*; C is chosen on the full
validation split (validation images never enter the support) with the linear probe's own
``select_C`` (the converged protocol: every fit solved to ``tol``), and the support fit at that C is
scored once on test (the support is the training set of the path, so that fit *is* the refit).
Reported per k as mean +- sd over seeds with the per-seed values (``benchmark.metrics.mean_sd``);
the plain metric names hold ``primary_k``, the others are ``<metric>@k<k>``.

Supports are nested: seed s permutes each class's train images once and support k takes the first
k, so the k = 5 support is inside the k = 10 one (less noise between ks). A k larger than the
smallest train class cannot give k images of every class; it is skipped (logged, recorded in
``resolved``) rather than silently run with fewer.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from benchmark import distributed
from benchmark.metrics import METRIC_NAMES, classification_metrics, mean_sd
from benchmark.predictions import fingerprint_of, image_predictions
from benchmark.records import metric, write_json_atomic
from evaluators.base import EvalContext, EvalOutput, EvaluatorSpec
from benchmark.options import Int, ListOf, member_of
from evaluators.linear import (CONVERGED_SOLVER, LINEAR_DEFAULTS, LINEAR_RULES, LINEAR_SCHEMA, converged_cs,
                               resolved_max_iter, select_C, standardizer)
from evaluators.registry import EVALUATORS

log = logging.getLogger(__name__)

KSHOT_DEFAULTS = {
    "ks": [1, 5, 10, 25, 100],
    "primary_k": 10,
    "seeds": 5,
    **{key: LINEAR_DEFAULTS[key] for key in ("wd_min_exp", "wd_max_exp", "wd_steps", "selection_metric",
                                              "standardize", "max_iter", "tol")},
}
KSHOT_SCHEMA = {"ks": ListOf(Int(min=1)), "primary_k": Int(min=1), "seeds": Int(min=1),
                **{key: LINEAR_SCHEMA[key] for key in KSHOT_DEFAULTS if key in LINEAR_SCHEMA}}


def support_permutations(labels: np.ndarray, n_classes: int, seed: int, draw: int) -> list[np.ndarray]:
    """Per class, a seeded permutation of its positions in ``labels``; support k = first k of each."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(draw), 0x4B5]))
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(n_classes)]


def draw_support(permutations: list[np.ndarray], k: int) -> np.ndarray:
    """Positions of the k-shot support (classes with no images contribute none)."""
    return np.concatenate([p[:k] for p in permutations if len(p)])


class _NonConvergenceCounter(logging.Filter):
    """Counts (and silences) the solver's per-fit non-convergence warnings; one summary is logged instead."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if "did not converge" in record.getMessage():
            self.count += 1
            return False
        return True


def _check_options(options: dict) -> list[int]:
    ks = options["ks"] if isinstance(options["ks"], (list, tuple)) else [options["ks"]]
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"kshot-linear: ks must be positive integers, got {options['ks']}")
    if int(options["primary_k"]) not in ks:
        raise ValueError(f"kshot-linear: primary_k={options['primary_k']} must be one of ks={ks}")
    if int(options["seeds"]) < 1:
        raise ValueError(f"kshot-linear: seeds must be >= 1, got {options['seeds']}")
    return ks


def run_kshot_linear(context: EvalContext, options: dict) -> EvalOutput:
    solver_log = logging.getLogger("evaluators.linear_solver")
    counter = _NonConvergenceCounter()
    solver_log.addFilter(counter)
    try:
        output = _run(context, options)
    finally:
        solver_log.removeFilter(counter)
    fits = output.extra["n_fits"]
    output.extra["non_converged_fits"] = counter.count
    output.resolved["unconverged_fits"] = counter.count
    if counter.count:
        log.warning("kshot-linear: %d of %d logistic-regression fits stopped before convergence (max_iter=%s)",
                    counter.count, fits, options["max_iter"])
    return output


def _run(context: EvalContext, options: dict) -> EvalOutput:
    ks = _check_options(options)
    train, val, test = context.features("train"), context.features("val"), context.features("test")
    n_classes = context.dataset.num_classes
    primary = context.primary_metric()
    selection = primary if options["selection_metric"] == "auto" else options["selection_metric"]
    present = np.bincount(train.y, minlength=n_classes)
    smallest = int(present[present > 0].min())
    feasible = [k for k in ks if k <= smallest]
    skipped = {str(k): f"the smallest train class has {smallest} images" for k in ks if k > smallest}
    if skipped:
        log.warning("kshot-linear: skipping k=%s: the smallest train class of '%s' has only %d images",
                    sorted(int(k) for k in skipped), context.dataset.name, smallest)
    if not feasible:
        raise ValueError(f"kshot-linear: no k in {ks} fits the train split (smallest class: {smallest} images)")
    scores: dict[int, list[dict]] = {k: [] for k in feasible}
    chosen: dict[int, list[float]] = {k: [] for k in feasible}
    supports: dict[str, dict[str, list[int]]] = {str(k): {} for k in feasible}
    probabilities: dict[int, list[np.ndarray]] = {k: [] for k in feasible}  # per seed: [N_test, C]
    support_ids: dict[int, list[np.ndarray]] = {k: [] for k in feasible}  # per seed: the support's image ids
    for draw in range(int(options["seeds"])):
        permutations = support_permutations(train.y, n_classes, context.seed, draw)
        for k in feasible:
            rows = draw_support(permutations, k)
            support_x, support_y = train.x[rows], train.y[rows]
            transform = standardizer(support_x) if options["standardize"] else (lambda a: a)
            best_c, _, fit = select_C(transform(support_x), support_y, transform(val.x), val.y, n_classes, options,
                                      selection, context.device)
            proba = fit.predict_proba(torch.as_tensor(transform(test.x), dtype=fit.weight.dtype, device=context.device))
            scores[k].append(classification_metrics(test.y, proba, n_classes))
            probabilities[k].append(proba)
            support_ids[k].append(train.ids[rows])
            chosen[k].append(best_c)
            supports[str(k)][str(draw)] = train.indices[rows].tolist()
    metrics = {}
    for k in feasible:
        for name in METRIC_NAMES:
            summary = mean_sd([s[name] for s in scores[k]])
            metrics[f"{name}@k{k}"] = metric(summary["mean"], None, sd=summary["sd"], n_seeds=summary["n"],
                                             values=summary["values"])
    primary_k = int(options["primary_k"])
    if primary_k not in feasible:
        log.warning("kshot-linear: primary k=%d skipped; reporting k=%d as primary", primary_k, feasible[-1])
        primary_k = feasible[-1]
    for name in METRIC_NAMES:
        metrics[name] = dict(metrics[f"{name}@k{primary_k}"])
    if distributed.is_main_process():
        write_json_atomic(context.artifacts_dir / "supports.json", supports)
    return EvalOutput(
        metrics=metrics, primary_metric=primary,
        resolved={"primary_k": primary_k, "ks": feasible, "skipped_ks": skipped, "seeds": int(options["seeds"]),
                  "selection_metric": selection, "support_pool": "train", "c_selection_on": "val",
                  "refit_on": "support", "tie_rule": "smallest C", "protocol": "converged",
                  "max_iter": resolved_max_iter(options), "solver": CONVERGED_SOLVER},
        extra={"C_per_k": {str(k): chosen[k] for k in feasible},
               "n_fits": int(options["seeds"]) * len(feasible) * len(converged_cs(options)),
               "support_file": str(context.artifacts_dir / "supports.json")},
        cost=context.feature_cost(),
        predictions=image_predictions(test.ids, test.y, np.stack(probabilities[primary_k]),
                                      fingerprint=fingerprint_of(*support_ids[primary_k]),
                                      replicates="support seeds", k=primary_k))


EVALUATORS.add("kshot-linear", EvaluatorSpec(
    name="kshot-linear", run=run_kshot_linear, defaults=KSHOT_DEFAULTS, option_schema=KSHOT_SCHEMA,
    option_rules=(member_of("primary_k", "ks"), *LINEAR_RULES),
    presets={"quick": {"ks": [1, 5, 10], "seeds": 3, "wd_steps": 8}},
    description="linear probe on k train images per class x seeds (k 1/5/10/25/100), C chosen on val, mean +- sd",
    benchmark_preset="quick", order=40, aliases=("kshot",)))
