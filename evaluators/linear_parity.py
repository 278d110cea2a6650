"""The ssl-transfer / ANTON ``linear.py`` protocol with the arithmetic of the scikit-learn it ran on.

ssl-transfer (ERIC-T, 2020) and ANTON fit ``LogisticRegression(solver='lbfgs',
multi_class='multinomial', warm_start=True)`` (so ``max_iter=100``, ``tol=1e-4``) at
``C = 1 / wd`` for ``wd in torch.logspace(-6, 5, 45)``, i.e. from C = 1e6 down to 1e-5, reusing one
estimator (each fit starts where the previous one stopped), keep the first strictly better
validation score (``best_score = 0``, ``if score > best_score``), then refit the same estimator
with the chosen C on train+val (starting from the last path fit, C = 1e-5) and score test once.

That code cannot run on today's scikit-learn (``multi_class`` was removed in 1.8), and what it
computed depends on the version: scikit-learn 0.22-1.0 minimised the **unscaled** objective
``sum_i CE + ||W||^2 / (2C)`` with ``scipy.optimize.minimize(method='L-BFGS-B', jac=True,
options={'gtol': tol, 'maxiter': max_iter})`` (scipy's defaults otherwise: ``ftol = 2.22e-9``,
``maxcor = 10``, ``maxls = 20``), in float64, and fitted binary problems with the softmax-2 model
(storing only the class-1 row: ``coef_ = w_1``, warm start ``[-coef_, coef_]``, predictions from
the sign of ``x . w_1 + b_1``, probabilities ``softmax([-d, d])``). Today's scikit-learn divides
the objective by N, stops at ``ftol = 64 eps`` with ``maxls = 50``, fits binary problems
binomially and keeps float32 inputs in float32; with ``max_iter = 100`` those stop at other points.

:class:`LegacyMultinomialLR` reproduces the 2020 arithmetic exactly (the same scipy optimiser on
the same function; only the floating-point summation order of the loss and gradient can differ,
which is true of any two machines). The loss and gradient are evaluated with torch on the run's
device, so the protocol also runs on a GPU. docs/evaluators.md ("Linear probe", `protocol=parity`) says
what differs from running their code on today's scikit-learn.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
from scipy import optimize

from evaluators.linear_solver import threads_for

log = logging.getLogger(__name__)

PARITY_SELECTION_METRICS = ("accuracy", "mean_per_class_accuracy")


def parity_cs(wd_min_exp: float, wd_max_exp: float, wd_steps: int) -> list[float]:
    """C values in ssl-transfer's order: ``1 / wd.item()`` for wd in float32 ``torch.logspace``."""
    return [1.0 / wd for wd in torch.logspace(wd_min_exp, wd_max_exp, int(wd_steps)).tolist()]


def legacy_loss_and_grad(w_flat: np.ndarray, x: torch.Tensor, target: torch.Tensor,
                         alpha: float) -> tuple[float, np.ndarray]:
    """scikit-learn 0.2x ``_multinomial_loss_grad``: ``sum_i CE + alpha/2 ||W||^2`` and its gradient.

    w_flat: [k * (D + 1)] (row-major [k, D + 1], intercept last); x: [N, D] float64; target:
    [N, k] one-hot. Returns (loss, gradient [k * (D + 1)]) as a float and a float64 array.
    """
    k, d = target.shape[1], x.shape[1]
    w = torch.as_tensor(w_flat, device=x.device).view(k, d + 1)
    coef, intercept = w[:, :d], w[:, d]
    logp = torch.addmm(intercept, x, coef.T)
    logp = logp - torch.logsumexp(logp, dim=1, keepdim=True)
    loss = -(target * logp).sum() + 0.5 * alpha * (coef * coef).sum()
    diff = torch.exp(logp) - target
    grad = torch.cat([diff.T @ x + alpha * coef, diff.sum(0)[:, None]], dim=1)
    return float(loss), grad.reshape(-1).cpu().numpy()


class LegacyMultinomialLR:
    """scikit-learn 0.22-1.0 ``LogisticRegression(solver='lbfgs', multi_class='multinomial',
    warm_start=True, max_iter, tol)``: ``fit`` at a C, ``decision_function``, ``predict``,
    ``predict_proba``, ``score``. Features: [N, D]; labels: [N] integers.
    """

    def __init__(self, max_iter: int = 100, tol: float = 1e-4, device: torch.device | str = "cpu"):
        self.max_iter, self.tol, self.device = int(max_iter), float(tol), torch.device(device)
        self.coef_: np.ndarray | None = None  # [1 or k, D]
        self.intercept_: np.ndarray | None = None
        self.classes_: np.ndarray | None = None
        self.n_iter_ = 0
        self.status_ = 0  # scipy's: 0 converged (gtol or ftol), 1 iteration limit, 2 line search failed

    def fit(self, x: np.ndarray, y: np.ndarray, C: float) -> "LegacyMultinomialLR":
        classes = np.unique(y)
        if classes.size < 2:
            raise ValueError(f"parity linear probe: the training labels hold one class ({classes.tolist()}); "
                             "scikit-learn's lbfgs needs at least 2")
        n_rows = max(2, classes.size)
        n, d = x.shape
        w0 = np.zeros((n_rows, d + 1))
        if self.coef_ is not None:
            w0 = self._warm_start(classes, n_rows, d)
        xt = torch.as_tensor(np.asarray(x, dtype=np.float64), device=self.device)
        target = torch.zeros(n, n_rows, dtype=torch.float64, device=self.device)
        target[torch.arange(n), torch.as_tensor(np.searchsorted(classes, y), device=self.device)] = 1.0
        with threads_for(self.device, n * d * n_rows):
            result = optimize.minimize(legacy_loss_and_grad, w0.ravel(), args=(xt, target, 1.0 / C),
                                       method="L-BFGS-B", jac=True,
                                       options={"gtol": self.tol, "maxiter": self.max_iter})
        self.n_iter_ = min(int(result.nit), self.max_iter)
        self.status_ = int(result.status)
        w = result.x.reshape(n_rows, d + 1)
        if classes.size == 2:
            w = w[1:2]  # 0.2x kept only the class-1 row of the softmax-2 fit
        self.coef_, self.intercept_, self.classes_ = w[:, :d].copy(), w[:, d].copy(), classes
        return self

    def _warm_start(self, classes: np.ndarray, n_rows: int, d: int) -> np.ndarray:
        """Initial [n_rows, D+1] weights from the previous fit, as scikit-learn 0.2x builds them."""
        coef = np.concatenate([self.coef_, self.intercept_[:, None]], axis=1)
        w0 = np.zeros((n_rows, d + 1))
        if np.array_equal(classes, self.classes_):
            if classes.size == 2:
                w0[0], w0[1] = -coef[0], coef[0]
            else:
                w0[:] = coef
            return w0
        # scikit-learn raised "Initialization coef is of shape ..." here; we keep the rows of the
        # classes both fits share and start the others at zero (documented deviation)
        log.warning("parity linear probe: classes changed between warm-started fits (%s -> %s); "
                    "scikit-learn 0.2x would stop with an error", self.classes_.tolist(), classes.tolist())
        old = coef if self.classes_.size > 2 else np.stack([-coef[0], coef[0]])
        for row, label in enumerate(classes):
            hit = np.flatnonzero(self.classes_ == label)
            if hit.size:
                w0[row] = old[hit[0]]
        return w0

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        scores = np.asarray(x, dtype=np.float64) @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, x: np.ndarray) -> np.ndarray:
        scores = self.decision_function(x)
        indices = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[indices]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """[N, len(classes_)] probabilities: softmax of the decision ([-d, d] for binary)."""
        scores = self.decision_function(x)
        scores = np.c_[-scores, scores] if scores.ndim == 1 else scores
        scores = scores - scores.max(axis=1, keepdims=True)
        proba = np.exp(scores)
        return proba / proba.sum(axis=1, keepdims=True)

    def score(self, x: np.ndarray, y: np.ndarray, metric: str) -> float:
        """ssl-transfer's ``fit_logistic_regression`` score (x100): accuracy or mean per-class accuracy.

        Mean per-class accuracy is their ``confusion_matrix(y, pred)``'s mean row-normalised
        diagonal, NaN when a predicted class is absent from ``y`` (NaN never wins the selection).
        """
        pred = self.predict(x)
        if metric == "accuracy":
            return 100.0 * float(np.mean(pred == y))
        if metric == "mean_per_class_accuracy":
            from sklearn.metrics import confusion_matrix  # imported where used: only this selection metric needs it
            cm = confusion_matrix(y, pred)
            with np.errstate(invalid="ignore", divide="ignore"):
                return 100.0 * float((cm.diagonal() / cm.sum(axis=1)).mean())
        raise ValueError(f"parity selection metric must be one of {PARITY_SELECTION_METRICS}, got '{metric}'")


@dataclass
class ParityResult:
    """Chosen C, the validation curve in path order, the final estimator (refit on train+val), the
    path's estimator at the chosen C (train only); ``n_iter`` and scipy's ``status`` per fit, path
    order, the refit last."""

    best_C: float
    curve: list[tuple[float, float]]
    model: LegacyMultinomialLR
    best_model: LegacyMultinomialLR
    n_iter: list[int]
    status: list[int]


def parity_path(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                refit_x: np.ndarray, refit_y: np.ndarray, Cs: list[float], metric: str, max_iter: int = 100,
                tol: float = 1e-4, device: torch.device | str = "cpu") -> ParityResult:
    """ssl-transfer's ``validate`` + ``evaluate`` fits: one warm-started estimator over ``Cs`` in
    the given order, the first strictly better val score wins, then the refit on (refit_x, refit_y)."""
    model = LegacyMultinomialLR(max_iter=max_iter, tol=tol, device=device)
    best_score, best_C, curve, n_iter, status = 0.0, None, [], [], []
    for C in Cs:
        model.fit(train_x, train_y, C)
        score = model.score(val_x, val_y, metric)
        curve.append((C, score))
        n_iter.append(model.n_iter_)
        status.append(model.status_)
        if score > best_score:
            best_score, best_C, best_model = score, C, copy.deepcopy(model)
    if best_C is None:
        raise ValueError(f"parity linear probe: no C gave a validation {metric} above 0 (ssl-transfer would stop "
                         "with a KeyError); check the validation split or use -o protocol=converged")
    model.fit(refit_x, refit_y, best_C)
    n_iter.append(model.n_iter_)
    status.append(model.status_)
    return ParityResult(best_C, curve, model, best_model, n_iter, status)
