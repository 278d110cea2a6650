"""Preconditioned compact L-BFGS with Armijo backtracking, replayed as CUDA graphs on a GPU.

The linear-probe problems are small (a few thousand samples, 10^4-10^5 parameters), so on a GPU one
iteration is bound by kernel launches and host synchronisations, not by flops: eagerly, an
iteration of HAM10000 ResNet-50 features launched ~50 small kernels and took 1.6-2.0 ms on an H200
whose float64 flops would need ~7 us (``benchmarks/solver_iteration_cost.py``; replayed: 0.29 ms). Here every tensor the iteration touches is a static buffer
updated in place, and each part of the iteration is a function of those buffers only:

* ``direction(count)``: the compact L-BFGS direction from the ``count`` newest curvature pairs;
* ``trial``: the objective and everything the line search decides on at ``theta + step * direction``;
* ``accept`` / ``accept and push``: move to the trial point (and shift in its curvature pair).

On CUDA each part is captured once as a CUDA graph (one per history length: the slices stay
fixed) after one eager warm-up call and replayed after that: an iteration is then three graph
launches and one host synchronisation (the line search's decision needs four numbers). The
replayed kernels are the eager ones, so a graphed run gives the eager run's iterates. The host
keeps every decision (step lengths, restarts, stopping), exactly as in an eager loop. On the CPU
the same functions simply run.
"""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Callable

import torch

logger = logging.getLogger(__name__)

__all__ = ["LbfgsRun", "MEMORY", "inverse_hessian_times"]

MEMORY = 10  # L-BFGS curvature pairs (measured: 10 and 20 need about the same iterations here)
ARMIJO = 1e-4  # sufficient-decrease constant of the line search
MAX_BACKTRACKS = 40
USE_CUDA_GRAPHS = True  # False: run every part eagerly on CUDA too (benchmarks compare both)
WARMUP_CALLS = 1  # eager calls (on a side stream, as capture requires) before a part is captured

Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # (theta, rho) -> (f, grad)
GradMeasure = Callable[[torch.Tensor], torch.Tensor]  # grad -> the stopping test's max |grad| (0-dim)


class _Replayed:
    """``fn()`` (it only updates static tensors in place): eager for the first calls, then a CUDA graph."""

    disabled = False  # set after a capture failed: every part then runs eagerly (logged once)

    def __init__(self, fn: Callable[[], None], device: torch.device):
        self.fn, self.device = fn, device
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self) -> None:
        # capture and replay on the buffers' device, whatever the current one is (``cuda:1`` while
        # ``cuda:0`` is current): a graph's stream belongs to the current device, its kernels to the buffers'
        with torch.cuda.device(self.device):
            self._call()

    def _call(self) -> None:
        if self.graph is not None:
            self.graph.replay()
            return
        if _Replayed.disabled:
            self.fn()
            return
        if self.calls < WARMUP_CALLS:
            self.calls += 1
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.fn()
            torch.cuda.current_stream(self.device).wait_stream(side)
            return
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: other threads' CUDA calls (a loader's, say) do not invalidate this capture
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.fn()
        except RuntimeError as error:  # an op this torch version cannot capture: stay eager
            logger.warning("L-BFGS: CUDA graph capture failed (%s); the solver runs eagerly", error)
            _Replayed.disabled = True
            self.fn()
            return
        self.graph = graph
        graph.replay()


class _Buffers:
    """The tensors one L-BFGS run updates in place, and the parts that update them.

    Kept apart from :class:`LbfgsRun` so that the parts (and their CUDA graphs) hold these buffers,
    not the run: no reference cycle, so a run's GPU memory goes as soon as its problem goes.
    """

    def __init__(self, size: int, dtype: torch.dtype, device: torch.device, objective: Objective,
                 grad_max: GradMeasure):
        self.objective, self.grad_max = objective, grad_max

        def zeros(*shape: int, kind: torch.dtype = dtype) -> torch.Tensor:
            return torch.zeros(shape, dtype=kind, device=device)

        self.theta, self.grad, self.precond, self.rho = zeros(size), zeros(size), zeros(size), zeros(size)
        self.s, self.y = zeros(MEMORY, size), zeros(MEMORY, size)  # pairs, oldest first, newest in the last row
        self.direction, self.trial, self.trial_grad = zeros(size), zeros(size), zeros(size)
        self.step = zeros()
        self.slope = zeros(kind=torch.float64)
        self.report = zeros(4, kind=torch.float64)  # f, slope, new slope, max|grad| at the trial point

    def compute_direction(self, count: int) -> None:
        start = MEMORY - count
        direction = -inverse_hessian_times(self.s[start:], self.y[start:], self.precond, self.grad)
        self.direction.copy_(direction)
        self.slope.copy_((direction @ self.grad).double())
        self.step.fill_(1.0)  # the line search's first trial (set here: one launch less per iteration)

    def evaluate_trial(self) -> None:
        torch.add(self.theta, self.step * self.direction, out=self.trial)
        f, g = self.objective(self.trial, self.rho)
        self.trial_grad.copy_(g)
        self.report.copy_(torch.stack([f.double(), self.slope, (g @ self.direction).double(),
                                       self.grad_max(g).double()]))

    def move(self, push: bool) -> None:
        if push:  # shift the pairs by one; the new pair s = trial - theta, y = grad change goes last
            self.s[:-1].copy_(self.s[1:].clone())
            self.y[:-1].copy_(self.y[1:].clone())
            torch.sub(self.trial, self.theta, out=self.s[-1])
            torch.sub(self.trial_grad, self.grad, out=self.y[-1])
        self.theta.copy_(self.trial)
        self.grad.copy_(self.trial_grad)


class LbfgsRun:
    """L-BFGS over ``size`` parameters with static buffers, reusable for any number of minimisations.

    ``objective(theta [size], rho [size]) -> (f 0-dim float64, grad [size])``; ``grad_max(grad)``
    is the stopping test's max-abs gradient (0-dim). ``rho`` is a per-parameter input the
    objective reads (the linear probe's penalty weights), constant during one minimisation.
    """

    def __init__(self, size: int, dtype: torch.dtype, device: torch.device, objective: Objective,
                 grad_max: GradMeasure):
        self.buffers = buffers = _Buffers(size, dtype, device, objective, grad_max)
        self.evaluations = 0  # objective evaluations, for FLOP bounds in benchmarks
        self.graphed = device.type == "cuda" and USE_CUDA_GRAPHS

        def part(fn: Callable[[], None]) -> Callable[[], None]:
            return _Replayed(fn, device) if self.graphed else fn

        self._direction = [part(partial(buffers.compute_direction, count)) for count in range(MEMORY + 1)]
        self._trial = part(buffers.evaluate_trial)
        self._accept = part(partial(buffers.move, False))
        self._accept_and_push = part(partial(buffers.move, True))

    # -- the iteration (host decisions) -------------------------------------------------------------
    def minimize(self, theta: torch.Tensor, rho: torch.Tensor,
                 preconditioner: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 tol: float, max_iter: int) -> tuple[torch.Tensor, int, str]:
        """Minimise from ``theta``; ``preconditioner(theta, rho)`` is the diagonal initial inverse Hessian.

        Stops when ``grad_max(grad) <= tol`` (reason "gtol"), at ``max_iter``, or when the objective
        no longer decreases at floating-point resolution. Returns (theta copy, iterations, reason).
        """
        b = self.buffers
        b.theta.copy_(theta)
        b.rho.copy_(rho)
        b.precond.copy_(preconditioner(b.theta, b.rho))  # refreshing it during a fit: no gain (measured)
        f_t, g = b.objective(b.theta, b.rho)
        self.evaluations += 1
        b.grad.copy_(g)
        f, gmax = torch.stack([f_t.double(), b.grad_max(g).double()]).tolist()
        count, n_iter, reason, restarted = 0, 0, "max_iter reached", False
        f_noise = 64 * torch.finfo(torch.float64).eps * max(abs(f), 1.0)
        while True:
            if not (math.isfinite(f) and math.isfinite(gmax)):
                reason = "non-finite objective"
                break
            if gmax <= tol:
                reason = "gtol"
                break
            if n_iter >= max_iter:
                break
            self._direction[count]()
            step, accepted = 1.0, False
            for _ in range(MAX_BACKTRACKS):
                if step != 1.0:
                    b.step.fill_(step)
                self._trial()
                self.evaluations += 1
                # the one host synchronisation per trial point: everything the decisions below need
                f_val, slope, new_slope, gmax_new = b.report.tolist()
                if not slope < 0:
                    break  # not a descent direction (round-off in the memory): restart below
                if math.isfinite(f_val) and f_val <= f + ARMIJO * step * slope:
                    accepted = True
                    break
                # near the optimum the decrease drops below the rounding of f: accept a step that is
                # within f's rounding and lands near the 1-d minimum (Hager-Zhang approximate Wolfe)
                if math.isfinite(f_val) and f_val <= f + f_noise and 0.9 * slope <= new_slope <= -0.8 * slope:
                    accepted = True
                    break
                # safeguarded quadratic interpolation of f along the direction
                denom = 2.0 * (f_val - f - slope * step) if math.isfinite(f_val) else math.inf
                step = min(max(-slope * step * step / denom, 0.1 * step), 0.5 * step) if denom > 0 else 0.1 * step
            stalled = accepted and f_val == f and gmax_new == gmax  # the step did not move theta at all
            if not accepted or stalled:
                if not restarted and count:
                    count, restarted = 0, True
                    continue
                reason = "no decrease at floating-point resolution"
                break
            restarted = False
            if step * (new_slope - slope) > 0:  # s.y of the pair: the objective is strictly convex
                self._accept_and_push()
                count = min(count + 1, MEMORY)
            else:
                self._accept()
            f, gmax = f_val, gmax_new
            f_noise = 64 * torch.finfo(torch.float64).eps * max(abs(f), 1.0)
            n_iter += 1
        return b.theta.clone(), n_iter, reason


def inverse_hessian_times(smat: torch.Tensor, ymat: torch.Tensor, precond: torch.Tensor,
                          g: torch.Tensor) -> torch.Tensor:
    """L-BFGS inverse Hessian times g, compact form (Byrd, Nocedal & Schnabel 1994, eq. 3.1).

    smat, ymat: [m, n] curvature pairs, oldest first (m may be 0); precond, g: [n].
    H = H0 + [S, H0 Y] [[R^-T (D + Y^T H0 Y) R^-1, -R^-T], [-R^-1, 0]] [S^T; Y^T H0] with
    H0 = gamma * diag(precond), gamma = s^T y / (y^T P y) of the newest pair.
    """
    if smat.shape[0] == 0:
        return precond * g
    sy = smat @ ymat.T  # [m, m]: s_i . y_j
    ypy = (ymat * precond) @ ymat.T
    gamma = sy[-1, -1] / ypy[-1, -1]
    r = torch.triu(sy)
    a = smat @ g
    b = gamma * ((ymat * precond) @ g)
    w = torch.linalg.solve_triangular(r, a[:, None], upper=True)[:, 0]
    t = torch.diagonal(sy) * w + gamma * (ypy @ w) - b
    p1 = torch.linalg.solve_triangular(r.T, t[:, None], upper=False)[:, 0]
    return gamma * precond * (g - ymat.T @ w) + smat.T @ p1
