"""Linear probe: multinomial L2 logistic regression on frozen pooled features.

Parity protocol (ANTON/ERIC-T ``linear.py``): C = 1/wd for wd in logspace(-6, 5, 45), chosen on
the validation split, refit with the chosen C on train + val (ANTON carves val from train and
refits on all of train), scored once on test. Solved with full-batch L-BFGS in torch, warm-started
along the C path (GPU when present); sklearn's ``LogisticRegression(lbfgs)`` is the reference it
matches (tests/evaluators/test_linear_solver.py). The softmax parameterisation equals sklearn's
``multi_class='multinomial'`` (ANTON's setting) for any number of classes; for two classes it equals
sklearn's binomial model at 2C.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from benchmark.calibration import calibration_metrics
from benchmark.metrics import METRIC_NAMES, classification_metrics, evaluate_with_ci, subgroup_metrics
from benchmark.options import Bool, Choice, Float, Int, not_above
from benchmark.predictions import image_predictions
from evaluators.base import EvalContext, EvalOutput, EvaluatorSpec
from evaluators.linear_solver import fit_logistic, regularization_path
from evaluators.registry import EVALUATORS

log = logging.getLogger(__name__)

LINEAR_DEFAULTS = {
    "wd_min_exp": -6.0, "wd_max_exp": 5.0, "wd_steps": 45,
    "selection_metric": "auto",  # auto = the dataset's primary metric
    "refit_on": "train+val",  # or "train"
    "standardize": False,  # parity: raw features
    "max_iter": 1000,
    "tol": 1e-4,  # sklearn's default gradient tolerance
    "n_boot": 1000,
}
LINEAR_SCHEMA = {  # type and range of every option (benchmark/options.py), checked before any compute
    "wd_min_exp": Float(min=-20, max=20), "wd_max_exp": Float(min=-20, max=20), "wd_steps": Int(min=1),  # wd = 10^exp
    "selection_metric": Choice("auto", *METRIC_NAMES), "refit_on": Choice("train+val", "train"),
    "standardize": Bool(), "max_iter": Int(min=1),  # tol >= 1e-12: the solver squares it (float64 underflow below)
    "tol": Float(min=1e-12), "n_boot": Int(min=1),
}
LINEAR_RULES = (not_above("wd_min_exp", "wd_max_exp"),)


def wd_grid(options: dict) -> np.ndarray:
    return np.logspace(options["wd_min_exp"], options["wd_max_exp"], int(options["wd_steps"]))


def fit_and_score(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                  n_classes: int, options: dict, selection_metric: str, device: torch.device):
    """Choose C on val; return (best C, refit train arrays, path of (C, val score))."""
    def tensor(a, kind=torch.float64):
        return torch.as_tensor(a, dtype=kind, device=device)
    cs = 1.0 / wd_grid(options)
    scorer = lambda y, proba: classification_metrics(y, proba, n_classes)[selection_metric]
    path = regularization_path(tensor(train_x), tensor(train_y, torch.int64), tensor(val_x), tensor(val_y, torch.int64),
                               n_classes, sorted(cs), scorer, max_iter=int(options.get("max_iter", 1000)),
                               tol=float(options.get("tol", 1e-4)))
    scores = [(c, s) for c, s, _ in path]
    finite = [(c, s) for c, s in scores if np.isfinite(s)]
    if not finite:
        raise ValueError(f"validation {selection_metric} is undefined for every C; check the validation split")
    best_score = max(s for _, s in finite)
    best_c = min(c for c, s in finite if s == best_score)  # ties -> strongest regularisation
    return best_c, scores


def standardizer(x: np.ndarray):
    mean, std = x.mean(0), x.std(0) + 1e-8
    return lambda a: (a - mean) / std


def run_linear(context: EvalContext, options: dict) -> EvalOutput:
    train, val, test = context.features("train"), context.features("val"), context.features("test")
    n_classes = context.dataset.num_classes
    primary = context.primary_metric()
    selection = primary if options["selection_metric"] == "auto" else options["selection_metric"]
    transform = standardizer(train.x) if options["standardize"] else (lambda a: a)
    best_c, scores = fit_and_score(transform(train.x), train.y, transform(val.x), val.y, n_classes, options,
                                   selection, context.device)
    refit_x, refit_y = transform(train.x), train.y
    if options["refit_on"] == "train+val":
        refit_x, refit_y = np.concatenate([refit_x, transform(val.x)]), np.concatenate([train.y, val.y])
    dtype = torch.float64  # float32 L-BFGS is not precise enough at large C (see linear_solver)
    fit = fit_logistic(torch.as_tensor(refit_x, dtype=dtype, device=context.device),
                       torch.as_tensor(refit_y, dtype=torch.int64, device=context.device), n_classes, best_c,
                       max_iter=int(options["max_iter"]), tol=float(options["tol"]))
    proba = fit.predict_proba(torch.as_tensor(transform(test.x), dtype=dtype, device=context.device))
    metrics = evaluate_with_ci(test.y, proba, n_boot=int(options["n_boot"]), seed=context.seed)
    # temperature fitted on val predictions of a model that did not see val: the train-only fit at the chosen C
    held_out = fit if options["refit_on"] == "train" else fit_logistic(
        torch.as_tensor(transform(train.x), dtype=dtype, device=context.device),
        torch.as_tensor(train.y, dtype=torch.int64, device=context.device), n_classes, best_c,
        max_iter=int(options["max_iter"]), tol=float(options["tol"]))
    metrics.update(calibration_metrics(val.y, held_out.predict_proba(torch.as_tensor(transform(val.x), dtype=dtype, device=context.device)),
                                       test.y, proba, n_boot=int(options["n_boot"]), seed=context.seed))
    subgroups = subgroup_metrics(test.y, proba, context.dataset.subgroups(test.indices), seed=context.seed)
    return EvalOutput(
        metrics=metrics, primary_metric=primary, subgroups=subgroups,
        resolved={"C": best_c, "wd": 1.0 / best_c, "selection_metric": selection, "converged": fit.converged,
                  "n_iter": fit.n_iter, "n_train": int(len(refit_y)), "n_test": int(len(test.y))},
        extra={"val_curve": [{"C": c, "score": s} for c, s in scores]},
        cost=context.feature_cost(),
        predictions=image_predictions(test.ids, test.y, proba, context.dataset.subgroups(test.indices)))


EVALUATORS.add("linear", EvaluatorSpec(
    name="linear", run=run_linear, defaults=LINEAR_DEFAULTS, option_schema=LINEAR_SCHEMA, option_rules=LINEAR_RULES,
    presets={"quick": {"wd_steps": 23, "max_iter": 300, "n_boot": 500}},
    description="L2 logistic regression on frozen features, C chosen on val (ANTON/ERIC-T parity)",
    benchmark_preset="quick", order=10))
