"""Linear probe: multinomial L2 logistic regression on frozen pooled features.

Two named protocols (``-o protocol=...``; docs/evaluators.md "Linear probe"):

* ``converged`` (default): C = 1/wd for wd in logspace(-6, 5, 45), every fit solved to
  ``max|grad| <= tol`` by :mod:`evaluators.linear_solver` (warm-started from small to large C),
  C chosen on val by the selection metric (ties -> the smallest C), refit with the chosen C on
  train + val, scored once on test with bootstrap CIs and per-subgroup metrics. Fits that did not
  converge are listed in the record (``resolved.unconverged_C``) and marked on the leaderboard.
* ``parity``: ssl-transfer/ANTON ``linear.py`` exactly, with the arithmetic of the scikit-learn
  it ran on (:mod:`evaluators.linear_parity`): C from 1e6 down to 1e-5, one warm-started
  estimator, ``max_iter=100``, first strictly better val score wins (ties -> the largest C),
  selection on accuracy or mean per-class accuracy, refit from the last path fit.

Multi-label datasets (features.y a 0/1 [N, L] matrix, ChestMNIST): one-vs-rest, i.e. one binary
``converged`` probe per finding (its own C, chosen on that finding's validation AUROC by default),
whose positive-class probabilities form the test scores [N, L]; AUC = mean over findings and
ACC = mean label accuracy at 0.5 (MedMNIST's definitions). ``parity`` (ssl-transfer's single-label
loop) is refused there; so are the calibration metrics and the per-image prediction side file,
which are defined for one class per image.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from benchmark.calibration import calibration_metrics
from benchmark.features import Features
from benchmark.metrics import METRIC_NAMES, classification_metrics, evaluate_scores, evaluate_with_ci, subgroup_metrics
from benchmark.options import AnyOf, Bool, Choice, Float, Int, not_above, validate_options
from benchmark.predictions import image_predictions
from evaluators.base import EvalContext, EvalOutput, EvaluatorSpec
from evaluators.linear_parity import PARITY_SELECTION_METRICS, parity_cs, parity_path
from evaluators.linear_solver import LogisticFit, fit_logistic, regularization_path
from evaluators.registry import EVALUATORS

log = logging.getLogger(__name__)

PROTOCOLS = ("converged", "parity")
CONVERGED_MAX_ITER = 10_000  # a safety cap: the whitened solver needs tens to hundreds of iterations per C
PARITY_MAX_ITER = 100  # scikit-learn's default, which ssl-transfer used
CONVERGED_SOLVER = "whitened L-BFGS (torch, float64)"  # recorded as resolved.solver

LINEAR_DEFAULTS = {
    "protocol": "converged",
    "wd_min_exp": -6.0, "wd_max_exp": 5.0, "wd_steps": 45,
    "selection_metric": "auto",  # converged: the dataset's primary metric; parity: see parity_selection_metric
    "refit_on": "train+val",  # or "train" (converged only)
    "standardize": False,  # raw features, as the seeds
    "max_iter": "auto",  # converged: CONVERGED_MAX_ITER; parity: PARITY_MAX_ITER
    "tol": 1e-4,  # scikit-learn's default gradient tolerance
    "n_boot": 1000,
}


def wd_grid(options: dict) -> np.ndarray:
    return np.logspace(options["wd_min_exp"], options["wd_max_exp"], int(options["wd_steps"]))


def converged_cs(options: dict) -> list[float]:
    """The converged protocol's C values, increasing, each once (a grid may repeat a value)."""
    return sorted({float(c) for c in 1.0 / wd_grid(options)})


def resolved_max_iter(options: dict) -> int:
    """The iteration cap ``max_iter="auto"`` stands for under the options' protocol."""
    value = options.get("max_iter", "auto")
    if value == "auto":
        return PARITY_MAX_ITER if options.get("protocol") == "parity" else CONVERGED_MAX_ITER
    return int(value)


def _parity_fixes(options: dict) -> str | None:
    """protocol=parity is ssl-transfer's protocol: its selection metrics, refit and raw features."""
    if options.get("protocol") == "parity":
        if options.get("selection_metric") not in ("auto", *PARITY_SELECTION_METRICS):
            return (f"protocol=parity selects on {' or '.join(PARITY_SELECTION_METRICS)} (ssl-transfer), "
                    f"got selection_metric={options.get('selection_metric')!r}")
        if options.get("refit_on") != "train+val" or options.get("standardize"):
            return ("protocol=parity fixes refit_on=train+val and standardize=false (ssl-transfer); "
                    "use protocol=converged to change them")
    elif options.get("selection_metric") == "mean_per_class_accuracy":
        return ("selection_metric=mean_per_class_accuracy is parity's (ssl-transfer's confusion-matrix score); "
                "protocol=converged uses balanced_accuracy")
    return None


LINEAR_SCHEMA = {  # type and range of every option (benchmark/options.py), checked before any compute
    "protocol": Choice(*PROTOCOLS),
    "wd_min_exp": Float(min=-20, max=20), "wd_max_exp": Float(min=-20, max=20), "wd_steps": Int(min=1),  # wd = 10^exp
    "selection_metric": Choice("auto", *METRIC_NAMES, "mean_per_class_accuracy"),
    "refit_on": Choice("train+val", "train"), "standardize": Bool(),
    "max_iter": AnyOf(Choice("auto"), Int(min=0)),
    "tol": Float(min=1e-12), "n_boot": Int(min=1),
}
LINEAR_RULES = (not_above("wd_min_exp", "wd_max_exp"), _parity_fixes)


def check_linear_options(options: dict) -> dict:
    """The options validated and normalised (one-line ``OptionError`` otherwise), before any compute."""
    return validate_options("linear", options, LINEAR_SCHEMA, LINEAR_RULES)


def parity_selection_metric(options: dict, primary: str) -> str:
    """ssl-transfer selects on accuracy, or mean per-class accuracy where the task is scored by a
    class-balanced metric; ``auto`` maps a balanced-accuracy dataset to the latter, anything else
    (AUROC for binary tasks, accuracy) to accuracy."""
    if options["selection_metric"] != "auto":
        return options["selection_metric"]
    return "mean_per_class_accuracy" if primary == "balanced_accuracy" else "accuracy"


def select_C(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, n_classes: int,
             options: dict, selection_metric: str, device: torch.device
             ) -> tuple[float, list[dict], LogisticFit]:
    """Converged protocol: fit every C (small to large, warm-started: ``regularization_path``) and
    choose on val.

    Returns (best C, curve [{C, score, n_iter, converged}] in increasing C, the fit at best C).
    A grid that repeats a value (``wd_min_exp == wd_max_exp``) fits it once.
    Ties in the val score go to the smallest C (the strongest regularisation).
    """
    path = regularization_path(
        torch.as_tensor(train_x, device=device), torch.as_tensor(train_y, device=device), val_x, val_y, n_classes,
        converged_cs(options), lambda y, proba: classification_metrics(y, proba, n_classes)[selection_metric],
        max_iter=resolved_max_iter(options), tol=float(options["tol"]))
    curve = [{"C": c, "score": score, "n_iter": fit.n_iter, "converged": fit.converged} for c, score, fit in path]
    fits = [fit for _, _, fit in path]
    finite = [i for i, point in enumerate(curve) if np.isfinite(point["score"])]
    if not finite:
        raise ValueError(f"validation {selection_metric} is undefined for every C; check the validation split")
    best_score = max(curve[i]["score"] for i in finite)
    best = min(i for i in finite if curve[i]["score"] == best_score)  # increasing C: first = smallest
    return curve[best]["C"], curve, fits[best]


def fit_and_score(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                  n_classes: int, options: dict, selection_metric: str, device: torch.device):
    """Converged protocol's C selection: (best C, [(C, val score), ...] in increasing C)."""
    best_c, curve, _ = select_C(train_x, train_y, val_x, val_y, n_classes, options, selection_metric, device)
    return best_c, [(point["C"], point["score"]) for point in curve]


def standardizer(x: np.ndarray):
    mean, std = x.mean(0), x.std(0) + 1e-8
    return lambda a: (a - mean) / std


def run_linear(context: EvalContext, options: dict) -> EvalOutput:
    options = check_linear_options(options)  # also done by the spec; kept for direct callers
    train, val, test = context.features("train"), context.features("val"), context.features("test")
    if np.ndim(train.y) == 2:
        return _run_multilabel(context, options, train, val, test)
    n_classes = context.dataset.num_classes
    primary = context.primary_metric()
    resolved, extra, proba, held_out_val = linear_probe(train, val, test, n_classes, options, primary, context.device)
    metrics = evaluate_with_ci(test.y, proba, n_boot=int(options["n_boot"]), seed=context.seed)
    # temperature fitted on val predictions of a model that did not see val: the train-only fit at the chosen C
    metrics.update(calibration_metrics(val.y, held_out_val, test.y, proba, n_boot=int(options["n_boot"]),
                                       seed=context.seed))
    subgroups = subgroup_metrics(test.y, proba, context.dataset.subgroups(test.indices), seed=context.seed)
    if resolved["unconverged_C"]:
        log.warning("linear: %d fit(s) stopped before converging (C = %s); listed in the record as "
                    "resolved.unconverged_C", len(resolved["unconverged_C"]),
                    ", ".join(f"{c:.3g}" for c in resolved["unconverged_C"]))
    return EvalOutput(metrics=metrics, primary_metric=primary, subgroups=subgroups,
                      resolved={**resolved, "n_test": int(len(test.y))}, extra=extra, cost=context.feature_cost(),
                      predictions=image_predictions(test.ids, test.y, proba, context.dataset.subgroups(test.indices)))


def multilabel_linear_probe(train: Features, val: Features, test: Features, findings: list[str], options: dict,
                            device: torch.device) -> tuple[dict, dict, np.ndarray]:
    """One-vs-rest: a binary ``converged`` probe per finding -> (resolved, extra, test scores [N_test, L]).

    ``*.y`` are 0/1 [N, L]; column ``l`` of the scores is finding ``l``'s positive-class probability.
    A finding with one class in train or val cannot be fitted or selected: it gets the train
    prevalence as its score (its AUC is then undefined and left out of the mean) and is listed.
    """
    if options["protocol"] == "parity":
        raise ValueError("linear: protocol=parity is ssl-transfer's single-label probe; multi-label datasets use "
                         "protocol=converged (one binary probe per finding)")

    def column(features: Features, k: int) -> Features:
        return Features(features.x, features.y[:, k].astype(np.int64), features.ids, features.groups,
                        features.indices, features.meta)
    scores = np.empty((len(test.y), len(findings)))
    per_finding, unconverged, selection = [], [], "auroc"
    for k, finding in enumerate(findings):
        binary_train, binary_val = column(train, k), column(val, k)
        if len(np.unique(binary_train.y)) < 2 or len(np.unique(binary_val.y)) < 2:
            scores[:, k] = float(binary_train.y.mean())
            per_finding.append({"finding": finding, "skipped": "one class in train or val"})
            log.warning("linear: finding '%s' has one class in train or val; scored by its train prevalence", finding)
            continue
        resolved, extra, proba, _ = linear_probe(binary_train, binary_val, column(test, k), 2, options, "auroc", device)
        scores[:, k] = proba[:, 1]
        selection = resolved["selection_metric"]
        unconverged += resolved["unconverged_C"]
        per_finding.append({"finding": finding, "C": resolved["C"], "converged": resolved["converged"],
                            "n_iter": resolved["n_iter"], "unconverged_C": resolved["unconverged_C"],
                            "val_curve": extra["val_curve"]})
    resolved = {"protocol": "converged", "multilabel": "one-vs-rest: one binary probe per finding",
                "C": {row["finding"]: row.get("C") for row in per_finding}, "selection_metric": selection,
                "tie_rule": "smallest C", "unconverged_C": unconverged,
                "skipped_findings": [row["finding"] for row in per_finding if "skipped" in row],
                "solver": CONVERGED_SOLVER, "max_iter": resolved_max_iter(options),
                "n_train": int(len(train.y) + (len(val.y) if options["refit_on"] == "train+val" else 0))}
    return resolved, {"per_finding": per_finding}, scores


def _run_multilabel(context: EvalContext, options: dict, train: Features, val: Features, test: Features
                    ) -> EvalOutput:
    resolved, extra, scores = multilabel_linear_probe(train, val, test, list(context.dataset.classes), options,
                                                      context.device)
    metrics = evaluate_scores(test.y, scores, n_boot=int(options["n_boot"]), seed=context.seed)
    subgroups = subgroup_metrics(test.y, scores, context.dataset.subgroups(test.indices), seed=context.seed)
    return EvalOutput(metrics=metrics, primary_metric=context.primary_metric("auroc"), subgroups=subgroups,
                      resolved={**resolved, "n_test": int(len(test.y))}, extra=extra, cost=context.feature_cost())


def linear_probe(train, val, test, n_classes: int, options: dict, primary: str, device: torch.device
                 ) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """(resolved, extra, test probabilities [N_test, n_classes], val probabilities [N_val, n_classes]
    of the train-only fit at the chosen C) of the options' protocol.

    train/val/test: :class:`benchmark.features.Features` (``x`` [N, D], ``y`` [N]).
    """
    if options["protocol"] == "parity":
        return _run_parity(train, val, test, n_classes, options, primary, device)
    return _run_converged(train, val, test, n_classes, options, primary, device)


def _run_converged(train, val, test, n_classes: int, options: dict, primary: str, device: torch.device):
    selection = primary if options["selection_metric"] == "auto" else options["selection_metric"]
    transform = standardizer(train.x) if options["standardize"] else (lambda a: a)
    best_c, curve, best_fit = select_C(transform(train.x), train.y, transform(val.x), val.y, n_classes, options,
                                       selection, device)
    refit_x, refit_y = transform(train.x), train.y
    if options["refit_on"] == "train+val":
        refit_x, refit_y = np.concatenate([refit_x, transform(val.x)]), np.concatenate([train.y, val.y])
    fit = fit_logistic(torch.as_tensor(refit_x, device=device), torch.as_tensor(refit_y, device=device), n_classes,
                       best_c, init=best_fit, max_iter=resolved_max_iter(options), tol=float(options["tol"]))
    proba = fit.predict_proba(torch.as_tensor(transform(test.x), dtype=fit.weight.dtype, device=device))
    held_out_val = best_fit.predict_proba(torch.as_tensor(transform(val.x), dtype=fit.weight.dtype, device=device))
    unconverged = [point["C"] for point in curve if not point["converged"]]
    if not fit.converged:
        unconverged.append(best_c)
    resolved = {"protocol": "converged", "C": best_c, "wd": 1.0 / best_c, "selection_metric": selection,
                "tie_rule": "smallest C", "converged": fit.converged, "n_iter": fit.n_iter,
                "max_iter": resolved_max_iter(options), "unconverged_C": unconverged,
                # the previous C's solution already met tol here: such scores say more about the path than C
                "tol_limited_C": [point["C"] for point in curve[1:] if point["n_iter"] == 0],
                "solver": CONVERGED_SOLVER, "n_train": int(len(refit_y))}
    extra = {"val_curve": curve, "refit": {"n_iter": fit.n_iter, "grad_norm": fit.grad_norm, "reason": fit.reason}}
    return resolved, extra, proba, held_out_val


def _run_parity(train, val, test, n_classes: int, options: dict, primary: str, device: torch.device):
    selection = parity_selection_metric(options, primary)
    cs = parity_cs(options["wd_min_exp"], options["wd_max_exp"], int(options["wd_steps"]))
    refit_x, refit_y = np.concatenate([train.x, val.x]), np.concatenate([train.y, val.y])
    max_iter = resolved_max_iter(options)
    result = parity_path(train.x, train.y, val.x, val.y, refit_x, refit_y, cs, selection, max_iter=max_iter,
                         tol=float(options["tol"]), device=device)
    proba = np.zeros((len(test.y), n_classes))
    proba[:, result.model.classes_] = result.model.predict_proba(test.x)
    held_out_val = np.zeros((len(val.y), n_classes))
    held_out_val[:, result.best_model.classes_] = result.best_model.predict_proba(val.x)
    fitted = cs + [result.best_C]
    unconverged = [c for c, status in zip(fitted, result.status) if status != 0]
    resolved = {"protocol": "parity", "C": result.best_C, "wd": 1.0 / result.best_C, "selection_metric": selection,
                "tie_rule": "largest C (first strictly better, C from large to small)",
                "converged": result.status[-1] == 0, "n_iter": result.n_iter[-1], "max_iter": max_iter,
                "unconverged_C": unconverged, "solver": "scipy L-BFGS-B on scikit-learn 0.2x's objective",
                "n_train": int(len(refit_y))}
    extra = {"val_curve": [{"C": c, "score": s / 100.0, "n_iter": it, "converged": st == 0}
                           for (c, s), it, st in zip(result.curve, result.n_iter, result.status)]}
    return resolved, extra, proba, held_out_val


EVALUATORS.add("linear", EvaluatorSpec(
    name="linear", run=run_linear, defaults=LINEAR_DEFAULTS, option_schema=LINEAR_SCHEMA, option_rules=LINEAR_RULES,
    presets={"quick": {"wd_steps": 23, "n_boot": 500}},
    description="L2 logistic regression on frozen features, C chosen on val; protocol=converged (default: every "
                "fit converged) or protocol=parity (ssl-transfer/ANTON linear.py exactly)",
    benchmark_preset="quick", order=10, multilabel=True))
