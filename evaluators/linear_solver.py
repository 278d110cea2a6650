"""Multinomial L2-regularised logistic regression: preconditioned L-BFGS in an exact whitened basis.

Objective (identical to ``sklearn.linear_model.LogisticRegression(penalty="l2", C=C)`` for >= 3
classes, with an unpenalised intercept)::

    C * sum_i CE(W x_i + b, y_i) + 0.5 * ||W||_F^2

We minimise the equivalent (same minimiser, divided by ``C * N``)::

    f(W, b) = mean_i CE(W x_i + b, y_i) + ||W||_F^2 / (2 * C * N)

which is the function today's sklearn hands to scipy's L-BFGS-B, so the tolerance ``tol`` has
sklearn's meaning: a fit has converged when ``max |grad f(W, b)| <= tol``. That test is always made
in these original coordinates (and finally on the original features themselves).

How it is solved (docs/evaluators.md, "Linear probe", section "Solver", has the measurements behind it).
Raw pooled features are strongly correlated (condition numbers of 1e7-1e9 are usual), which is
what makes plain L-BFGS on them need thousands of iterations. An exact change of variables removes
that without changing the minimiser:

1. centring, ``x_c = x - mean``, with the intercept re-parametrised as ``c = b + W mean`` (the
   penalty stays on ``W``, the intercept stays unpenalised: the same function of (W, b));
2. an orthonormal eigenbasis ``V`` [D, r] of the centred Gram matrix, so ``W = U V^T``. The
   optimum lies in this span (the gradient of the data term does), rotations keep ``||W||``, and
   directions with (numerically) zero variance are dropped: ``r <= min(D, N - 1)``. For N < D
   (k-shot supports) the basis comes from the N x N kernel matrix instead;
3. whitening, ``z = x_c V / sqrt(lambda)`` and ``u = U * sqrt(lambda)``, so the data Gram is the
   identity and the penalty becomes diagonal: ``sum_j ||u_j||^2 / (2 C N lambda_j)``.

In these coordinates a diagonal Hessian model is cheap: ``mean_i p_i (1 - p_i) z_ij^2`` (averaged
over the classes, floored) ``+ 1/(C N lambda_j)``; its inverse at the start of each fit is the
L-BFGS preconditioner (see :func:`_preconditioner`; refreshing it during a fit gained nothing).
L-BFGS (:mod:`evaluators.lbfgs`) uses the compact representation (a handful of small matrix
products per iteration instead of a two-loop recursion, which matters on GPUs: launches, not flops,
bound it), an Armijo backtracking line search (the objective is strictly convex, so every curvature
pair is valid) and one host synchronisation per trial point; on CUDA the iteration's parts are
replayed as CUDA graphs (one :class:`~evaluators.lbfgs.LbfgsRun` per problem, reused by its fits).
Along a C path (:meth:`LogisticProblem.fit_path`) each fit starts from the linear extrapolation in log C of the two previous solutions; the L-BFGS memory
restarts at each C (keeping it, corrected exactly for the new penalty, was measured to be much
slower: the old pairs describe the previous optimum, not the new path).

Measured on 6009 x 2048 HAM10000 ResNet-50 features (45 C values, tol 1e-4; CPU): 3097 iterations
with Boehning's constant bound 1/2 as preconditioner, 1998 with the class-averaged diagonal, 993
with the extrapolated starts as well; the first torch.optim.LBFGS solver on raw features needed up
to 1000 iterations per C and still left 9 of 45 fits unconverged.

Binary case (``n_classes == 2``). We use the softmax formulation with one weight row per class.
sklearn instead fits a single-logit binomial model ``sigmoid(w.x + c)`` with penalty
``0.5 ||w||^2``. The softmax-2 likelihood only depends on ``v = w_1 - w_0`` and ``c = b_1 - b_0``;
for a fixed ``v`` the penalty ``0.5 (||w_0||^2 + ||w_1||^2)`` is smallest at ``w_1 = -w_0 = v/2``
where it equals ``||v||^2 / 4``. Hence the softmax-2 objective at ``C`` is::

    C * sum_i l(v, c; x_i, y_i) + ||v||^2 / 4  =  1/2 * [ (2C) * sum_i l(...) + 0.5 ||v||^2 ]

i.e. sklearn's binomial objective with ``C_sklearn = 2 * C`` (see :func:`sklearn_equivalent_C`).

Classes absent from the training labels: the unpenalised intercept of such a class has no finite
optimum (it goes to ``-inf``). We fit the present classes only (the exact limit of the objective)
and give absent classes a zero weight row and a ``-inf`` bias, so their probability is exactly 0.

Caveat (shared with sklearn): with weak regularisation (large C) on (nearly) separable data the
objective is extremely flat; ``max |grad| <= tol`` then holds on a large set of weights, so the
returned fit depends on the starting point (along a warm-started path, fits at C >= ~1e3 often
stop where the previous C stopped). Pass a smaller ``tol`` to pin the minimiser down further.
"""

from __future__ import annotations

import logging
import math
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from evaluators.lbfgs import LbfgsRun

logger = logging.getLogger(__name__)

__all__ = ["LogisticFit", "LogisticProblem", "fit_logistic", "regularization_path", "sklearn_equivalent_C",
           "threads_for"]

CURVATURE_FLOOR = 5e-3  # of the preconditioner's data curvature (Boehning's bound is 0.5)
SMALL_PROBLEM = 5e7  # multiply-adds per step below which CPU work runs on one thread (see threads_for)


def sklearn_equivalent_C(C: float, n_classes: int) -> float:
    """sklearn ``LogisticRegression`` C giving the same solution as ``fit_logistic(C=C)``.

    Equal to ``C`` for ``n_classes >= 3`` (same multinomial objective) and ``2 * C`` for binary
    problems (sklearn uses a single-logit binomial model; see module docstring).
    """
    return 2.0 * C if n_classes == 2 else C


@dataclass
class LogisticFit:
    """A fitted multinomial logistic regression.

    weight: [n_classes, D]; bias: [n_classes] (``-inf`` for classes absent from the training labels).
    ``C`` is the inverse regularisation strength, ``n_iter`` the number of L-BFGS iterations,
    ``grad_norm`` the max-abs gradient of ``f`` (module docstring) at the solution, measured on the
    original features, ``loss`` the value of ``f``, ``reason`` why the solver stopped.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    C: float
    n_iter: int
    converged: bool
    grad_norm: float
    loss: float = field(default=float("nan"))
    reason: str = ""
    state: "_SolverState | None" = field(default=None, repr=False, compare=False)  # warm start in the same problem

    @torch.no_grad()
    def logits(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """x: [N, D] -> logits [N, n_classes] on the weight's device/dtype."""
        x = torch.as_tensor(x).to(device=self.weight.device, dtype=self.weight.dtype)
        return x @ self.weight.T + self.bias

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """x: [N, D] -> class probabilities [N, n_classes] as float64 numpy (rows sum to 1)."""
        proba = torch.softmax(self.logits(x).double(), dim=1)
        return proba.cpu().numpy()


@dataclass
class _SolverState:
    """A fit's whitened parameters ``theta`` [k * r + k] and the problem they belong to."""

    problem: object  # LogisticProblem._token: unique per problem, unlike id()
    theta: torch.Tensor


def _solver_dtype(device: torch.device) -> torch.dtype:
    """Default solver precision: float64 on every device (CPU and CUDA).

    The whitening and the large-C fits need it: float32 probabilities differed from float64 by up
    to 5e-2 at C >= 1e2 (H100, N=2000, D=512), and float32 matmuls may silently run in TF32. The
    problem is latency-bound, and Hopper's FP64 rate is close to its FP32 rate, so float64 costs
    little. Pass ``dtype=torch.float32`` to opt in to float32 (the objective's reductions and the
    basis stay float64).
    """
    return torch.float64


def _loss_and_grad(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, inv_cn: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``f = mean CE + ||W||^2 * inv_cn / 2`` and its gradients, on the original features.

    x: [N, D], y: [N] (indices into the K fitted classes), w: [K, D], b: [K]. Returns float64
    (loss scalar, grad_w [K, D], grad_b [K]).
    """
    n = x.shape[0]
    logits = torch.addmm(b.to(x.dtype), x, w.to(x.dtype).T).double()
    log_z = torch.logsumexp(logits, dim=1)
    ce = (log_z - logits.gather(1, y[:, None]).squeeze(1)).mean()
    w64 = w.double()
    loss = ce + 0.5 * inv_cn * (w64 * w64).sum()
    g = torch.exp(logits - log_z[:, None])
    g[torch.arange(n, device=x.device), y] -= 1.0
    g /= n
    grad_w = (g.to(x.dtype).T @ x).double() + inv_cn * w64
    return loss, grad_w, g.sum(0)


def _check_inputs(x, y, n_classes: int, dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(x)
    dtype = dtype or _solver_dtype(x.device)
    x = x.to(dtype=dtype)
    y = torch.as_tensor(y, device=x.device).long()
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"expected x [N, D] and y [N], got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("empty training set")
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got [{int(y.min())}, {int(y.max())}]")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains non-finite values")
    return x, y


class LogisticProblem:
    """One training set, prepared once (whitened basis) and fitted at any number of C values.

    x: [N, D] features (solver device = x's device; float64 unless ``dtype``), y: [N] labels in
    ``[0, n_classes)``.
    """

    def __init__(self, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, n_classes: int,
                 dtype: torch.dtype | None = None):
        self.x, y = _check_inputs(x, y, n_classes, dtype)
        self._token = object()
        self.n_classes = int(n_classes)
        self.device, self.dtype = self.x.device, self.x.dtype
        self.present = torch.unique(y)
        self.k = int(self.present.numel())
        absent = sorted(set(range(n_classes)) - set(self.present.tolist()))
        if absent:
            logger.warning("fit_logistic: classes %s absent from the training labels; they get probability 0", absent)
        remap = torch.full((n_classes,), -1, dtype=torch.long, device=self.device)
        remap[self.present] = torch.arange(self.k, device=self.device)
        self.y = remap[y]
        self.n, self.d = self.x.shape
        self._run: LbfgsRun | None = None
        if self.k >= 2:
            with threads_for(self.device, min(self.n, self.d) ** 3 / 20):
                self._build_basis()

    @torch.no_grad()
    def _build_basis(self) -> None:
        """mean [D], basis [D, r] (orthonormal), scale [r] = sqrt(eigenvalue), z1 [N, r + 1] whitened + 1."""
        x64 = self.x.double()
        self.mean = x64.mean(0)
        xc = x64 - self.mean
        n, d = xc.shape
        if n < d:  # kernel trick: eigenvectors of xc xc^T / n give the basis of the row space
            lam, q = torch.linalg.eigh(xc @ xc.T / n)
        else:
            lam, v = torch.linalg.eigh(xc.T @ xc / n)
        floor = float(lam.max()) * max(n, d) * torch.finfo(torch.float64).eps
        keep = lam > max(floor, torch.finfo(torch.float64).tiny)
        lam = lam[keep]
        self.scale = lam.sqrt()
        if n < d:
            q = q[:, keep]
            self.basis = (xc.T @ q) / (self.scale * math.sqrt(n))
            z = q * math.sqrt(n)
        else:
            self.basis = v[:, keep]
            z = (xc @ self.basis) / self.scale
        self.r = int(lam.numel())
        # z1 = [z, 1]: one product gives the logits and one the whole gradient (intercept included)
        self.z1 = torch.cat([z, torch.ones(n, 1, dtype=z.dtype, device=self.device)], dim=1).to(self.dtype)
        self._onehot = torch.nn.functional.one_hot(self.y, self.k).double()  # [N, k]
        self.z1_sq: torch.Tensor | None = None  # z1 ** 2, made on the first preconditioner

    # -- coordinates: theta is [k, r + 1] row-major, the whitened weights u then the intercept c ----
    def _split(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        view = theta.view(self.k, self.r + 1)
        return view[:, : self.r], view[:, self.r]

    def _to_original(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whitened theta -> (W [k, D], b [k]) in float64."""
        u, c = self._split(theta.double())
        w = (u / self.scale) @ self.basis.T
        return w, c - w @ self.mean

    def _from_original(self, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(W [k, D], b [k]) -> whitened theta; the part of W outside the basis span is dropped."""
        w, b = w.double(), b.double()
        u = (w @ self.basis) * self.scale
        c = b + w @ self.mean
        return torch.cat([u, c[:, None]], dim=1).reshape(-1).to(self.dtype)

    def _original_grad_max(self, grad: torch.Tensor) -> torch.Tensor:
        """max |grad f| in the original (W, b) coordinates from the whitened gradient (0-dim tensor)."""
        gu, gc = self._split(grad.double())
        gw = torch.addr((gu * self.scale) @ self.basis.T, gc, self.mean)
        return torch.maximum(gw.abs().max(), gc.abs().max()) if gw.numel() else gc.abs().max()

    # -- objective in whitened coordinates ---------------------------------------------------------
    def _penalty(self, C: float) -> torch.Tensor:
        """Per-entry penalty weights of theta, [k * (r + 1)]: rho_j = 1 / (C N lambda_j), 0 for c."""
        rho = (1.0 / (C * self.n)) / (self.scale * self.scale)
        rho = torch.cat([rho, torch.zeros(1, dtype=rho.dtype, device=rho.device)])
        return rho.repeat(self.k).to(self.dtype)

    def _objective(self, theta: torch.Tensor, rho: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f (float64 0-dim) and its gradient [k * (r + 1)] at whitened theta (a few fused kernels)."""
        view = theta.view(self.k, self.r + 1)
        logits = (self.z1 @ view.T).double()
        ce = torch.nn.functional.cross_entropy(logits, self.y)  # per-sample log-sum-exp: accurate f
        scaled = rho * theta  # penalty gradient
        f = ce + 0.5 * torch.dot(scaled.double(), theta.double())
        g = (torch.softmax(logits, dim=1) - self._onehot).to(self.dtype)
        grad = torch.addmm(scaled.view(self.k, self.r + 1), g.T, self.z1, alpha=1.0 / self.n)
        return f, grad.reshape(-1)

    def _lbfgs(self) -> LbfgsRun:
        """The problem's L-BFGS buffers (and, on CUDA, its captured graphs), made on the first fit."""
        if self._run is None:
            # weak references: the run must not keep the problem alive (a reference cycle would hold
            # the problem's features and captured graphs on the GPU until the cyclic collector ran)
            objective, grad_max = weakref.WeakMethod(self._objective), weakref.WeakMethod(self._original_grad_max)
            self._run = LbfgsRun(self.k * (self.r + 1), self.dtype, self.device,
                                 lambda theta, rho: objective()(theta, rho), lambda grad: grad_max()(grad))
        return self._run

    # -- fitting -----------------------------------------------------------------------------------
    def fit(self, C: float, init: LogisticFit | None = None, max_iter: int = 1000, tol: float = 1e-6) -> LogisticFit:
        """Fit at ``C``; ``init`` warm-starts (from any fit with this problem's shape)."""
        if not C > 0 or not math.isfinite(C):
            raise ValueError(f"C must be a positive finite number, got {C}")
        if max_iter < 0:
            raise ValueError(f"max_iter must be >= 0, got {max_iter}")
        weight = torch.zeros(self.n_classes, self.d, dtype=self.dtype, device=self.device)
        bias = torch.full((self.n_classes,), -math.inf, dtype=self.dtype, device=self.device)
        if self.k == 1:
            bias[self.present] = 0.0
            logger.warning("fit_logistic: only one class present in the training labels; trivial model")
            return LogisticFit(weight, bias, float(C), 0, True, 0.0, 0.0, "one class")
        rho = self._penalty(float(C))
        with threads_for(self.device, self.n * self.r * self.k), torch.no_grad():
            theta, n_iter, reason = self._lbfgs().minimize(
                self._initial_theta(init), rho, partial(_preconditioner, self), tol, max_iter)
            w, b = self._to_original(theta)
            # the honest check: the gradient of f on the original features
            loss, gw, gb = _loss_and_grad(self.x, self.y, w, b, 1.0 / (float(C) * self.n))
            grad_norm = float(torch.maximum(gw.abs().max(), gb.abs().max()))
        converged = grad_norm <= tol
        if not converged:
            logger.warning(
                "fit_logistic did not converge (C=%g, %s, n_iter=%d/%d, max|grad|=%.3g > tol=%g, loss=%.6g)",
                C, reason, n_iter, max_iter, grad_norm, tol, float(loss))
        else:
            logger.debug("fit_logistic C=%g converged in %d iterations, max|grad|=%.3g", C, n_iter, grad_norm)
        weight[self.present] = w.to(self.dtype)
        bias[self.present] = b.to(self.dtype)
        return LogisticFit(weight, bias, float(C), n_iter, converged, grad_norm, float(loss),
                           "gtol" if converged else reason, _SolverState(self._token, theta))

    def fit_path(self, Cs: Sequence[float], max_iter: int = 1000, tol: float = 1e-6) -> Iterator[LogisticFit]:
        """Fits at increasing ``Cs``, each started from the previous solutions (a predictor step).

        The start is the linear extrapolation in log C of the two previous solutions (measured:
        558 -> 407 iterations for 45 C on synthderm features, 1998 -> 993 on HAM10000's), the
        previous solution for the second C. Yields one :class:`LogisticFit` per C.
        """
        logs = [math.log(float(c)) for c in Cs]
        if any(b <= a for a, b in zip(logs, logs[1:])):
            raise ValueError("fit_path needs strictly increasing C values")
        prev: LogisticFit | None = None
        older: torch.Tensor | None = None
        for i, c in enumerate(Cs):
            init = prev
            if prev is not None and older is not None:
                ratio = (logs[i] - logs[i - 1]) / (logs[i - 1] - logs[i - 2])
                theta = prev.state.theta + ratio * (prev.state.theta - older)
                init = LogisticFit(prev.weight, prev.bias, float(c), 0, False, math.nan,
                                   state=_SolverState(self._token, theta))
            fit = self.fit(float(c), init=init, max_iter=max_iter, tol=tol)
            older = prev.state.theta if prev is not None else None
            yield fit
            prev = fit

    def _initial_theta(self, init: LogisticFit | None) -> torch.Tensor:
        """Whitened start: zeros, the fit's own theta (same problem) or its weights mapped in."""
        if init is None:
            return torch.zeros(self.k * (self.r + 1), dtype=self.dtype, device=self.device)
        if tuple(init.weight.shape) != (self.n_classes, self.d):
            raise ValueError(f"init weight shape {tuple(init.weight.shape)} != {(self.n_classes, self.d)}")
        if init.state is not None and init.state.problem is self._token:
            return init.state.theta.clone()
        w0 = init.weight.detach().to(device=self.device)[self.present]
        b0 = init.bias.detach().to(device=self.device)[self.present]
        b0 = torch.where(torch.isfinite(b0), b0, torch.zeros_like(b0))
        return self._from_original(w0, b0)


@contextmanager
def threads_for(device: torch.device, work: float):
    """One intra-op thread for small CPU work (``work``: multiply-adds per step), restored afterwards.

    Each iteration is a few small products; with several threads their fork/join (and, on a
    shared machine, waiting for a core) costs more than the work: measured on the 2-core CI-like
    machine under load, a 45-C path on 925 x 512 features took 41.5 s with 2 threads, 2.5 s with 1.
    """
    if device.type != "cpu" or work >= SMALL_PROBLEM:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _preconditioner(problem: LogisticProblem, theta: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """Inverse of a diagonal Hessian model at ``theta`` in whitened coordinates, [k * (r + 1)].

    Data part: the Hessian's diagonal ``mean_i p_ik (1 - p_ik) z1_ij^2`` averaged over the classes
    k (z1's last column is the intercept's 1), floored at ``CURVATURE_FLOOR``; plus the penalty
    ``rho``. Class-uniform on purpose: the softmax Hessian is nearly singular along "the same change
    for every class", and a per-class diagonal mixes that direction with well-curved ones (measured:
    2590 instead of 184 iterations on a 7-C path at tol 1e-9; 505 vs 558 on synthderm at 1e-4).
    """
    p = torch.softmax((problem.z1 @ theta.view(problem.k, problem.r + 1).T).double(), dim=1)
    if problem.z1_sq is None:
        problem.z1_sq = problem.z1.double() ** 2
    data = ((p * (1.0 - p)).mean(1) @ problem.z1_sq) / problem.n  # [r + 1], the class average
    return (1.0 / (data.clamp_min(CURVATURE_FLOOR).repeat(problem.k) + rho)).to(problem.dtype)


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    C: float,
    init: LogisticFit | None = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
    dtype: torch.dtype | None = None,
) -> LogisticFit:
    """Fit multinomial L2 logistic regression at one C (see module docstring).

    x: [N, D] features; the solver runs on ``x``'s device, in float64 unless ``dtype`` is given.
    y: [N] int64 labels in ``[0, n_classes)``. init: warm start (e.g. the fit at a neighbouring C);
    rows of classes absent from ``y`` are ignored. Converged means ``max|grad f| <= tol`` on the
    original features; otherwise ``converged=False``, a logged warning, and ``reason`` says why.
    """
    return LogisticProblem(x, y, n_classes, dtype).fit(C, init=init, max_iter=max_iter, tol=tol)


def regularization_path(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor | np.ndarray,
    y_val: torch.Tensor | np.ndarray,
    n_classes: int,
    Cs: Sequence[float],
    score: Callable[[np.ndarray, np.ndarray], float],
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> list[tuple[float, float, LogisticFit]]:
    """Fit along ``Cs`` from smallest to largest C, warm-started (:meth:`LogisticProblem.fit_path`).

    x_train: [N, D], y_train: [N]; x_val: [M, D], y_val: [M]. ``score(y_val [M], proba [M, C])``
    is higher-is-better. Returns ``[(C, val_score, fit), ...]`` in increasing C order; selecting
    the best entry (and breaking ties) is left to the caller.
    """
    if len(Cs) == 0:
        raise ValueError("Cs is empty")
    problem = LogisticProblem(x_train, y_train, n_classes)
    y_val_np = y_val.cpu().numpy() if isinstance(y_val, torch.Tensor) else np.asarray(y_val)
    x_val_t = torch.as_tensor(x_val).to(device=problem.device, dtype=problem.dtype)
    results: list[tuple[float, float, LogisticFit]] = []
    for fit in problem.fit_path(sorted(float(c) for c in Cs), max_iter=max_iter, tol=tol):
        s = float(score(y_val_np, fit.predict_proba(x_val_t)))
        logger.debug("regularization_path C=%g score=%.6g n_iter=%d converged=%s", fit.C, s, fit.n_iter, fit.converged)
        results.append((fit.C, s, fit))
    return results
