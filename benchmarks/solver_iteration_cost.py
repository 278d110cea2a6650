#!/usr/bin/env python
"""What one L-BFGS iteration of the linear probe costs on a GPU, part by part, next to its products' floor.

    python benchmarks/solver_iteration_cost.py --device cuda            # HAM10000 ResNet-50 shape (6009 x 2048)
    python benchmarks/solver_iteration_cost.py --device cuda --dim 512  # ResNet-18 shape

On a synthetic problem of the given shape (``linear_probe_speed.synthetic``) it fits the 45-C path
twice (the second time every CUDA graph is already captured) and then times, averaged over many
calls: each captured part of an iteration (``evaluators/lbfgs.py``: the direction with a full
history, the trial point, the move), reading the line search's numbers back, a whole iteration
with and without that synchronisation, and the bare products
the parts are made of (the logits and gradient products over the whitened features, the
direction's Gram products). Also the same path with CUDA graphs off. A short table is printed last.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.linear_probe_speed import _sync, synthetic  # noqa: E402
from evaluators import lbfgs  # noqa: E402
from evaluators.linear_parity import parity_cs  # noqa: E402
from evaluators.linear_solver import LogisticProblem  # noqa: E402


def per_call(fn, device: torch.device, calls: int) -> float:
    """Mean seconds per call of ``fn`` over ``calls`` back-to-back calls (after one untimed call)."""
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension (HAM10000 split sizes)")
    parser.add_argument("--calls", type=int, default=300, help="calls per timed part")
    args = parser.parse_args()
    device = torch.device(args.device)
    train = synthetic(args.dim)["train"]
    x, y = torch.as_tensor(train.x, device=device), torch.as_tensor(train.y, device=device)
    cs = sorted(parity_cs(-6, 5, 45))
    LogisticProblem(x[:200], y[:200], 7).fit(1.0)  # library start-up (cuBLAS, cuSOLVER) outside the timings

    start = time.perf_counter()
    problem = LogisticProblem(x, y, 7)
    _sync(device)
    setup = time.perf_counter() - start
    rows = [("whiten the features (LogisticProblem)", setup, "")]
    start = time.perf_counter()
    fits = list(problem.fit_path(cs, tol=1e-4))
    _sync(device)
    first = time.perf_counter() - start
    iterations = sum(f.n_iter for f in fits)
    start = time.perf_counter()
    list(problem.fit_path(cs, tol=1e-4))
    _sync(device)
    again = time.perf_counter() - start
    rows += [("45-C path, first (on CUDA: graphs captured on the way)", first, f"{iterations} iterations"),
             ("45-C path, again", again, f"{again / iterations * 1e3:.3f} ms per iteration")]
    lbfgs.USE_CUDA_GRAPHS = False
    try:
        eager_problem = LogisticProblem(x, y, 7)
        start = time.perf_counter()
        list(eager_problem.fit_path(cs, tol=1e-4))
        _sync(device)
        eager = time.perf_counter() - start
    finally:
        lbfgs.USE_CUDA_GRAPHS = True
    rows.append(("45-C path without CUDA graphs", eager, f"{eager / iterations * 1e3:.3f} ms per iteration"))

    run = problem._lbfgs()
    full = run._direction[lbfgs.MEMORY]
    parts = {
        "direction, full history": full,
        "trial point (objective + line-search numbers)": run._trial,
        "move + new curvature pair": run._accept_and_push,
        "read the line-search numbers (synchronise)": lambda: run.buffers.report.tolist(),
    }
    for name, fn in parts.items():
        rows.append((name, per_call(fn, device, args.calls), "replayed graph" if run.graphed and "read" not in name
                     else ""))

    def iteration() -> None:
        full(), run._trial(), run.buffers.report.tolist(), run._accept_and_push()

    def iteration_no_sync() -> None:
        full(), run._trial(), run._accept_and_push()
    rows.append(("one iteration (3 parts + synchronisation)", per_call(iteration, device, args.calls), ""))
    rows.append(("one iteration, no synchronisation (GPU-bound)", per_call(iteration_no_sync, device, args.calls), ""))

    z1 = problem.z1
    theta = run.buffers.theta.view(problem.k, problem.r + 1)
    grad_rows = torch.randn(problem.n, problem.k, dtype=z1.dtype, device=device)
    pairs = run.buffers.s
    products = {
        f"logits product [{problem.n} x {problem.r + 1}] @ [{problem.r + 1} x {problem.k}]": lambda: z1 @ theta.T,
        f"gradient product [{problem.k} x {problem.n}] @ [{problem.n} x {problem.r + 1}]": lambda: grad_rows.T @ z1,
        f"direction Gram product [{lbfgs.MEMORY} x {pairs.shape[1]}] @ its transpose": lambda: pairs @ pairs.T,
    }
    for name, fn in products.items():
        rows.append((name, per_call(fn, device, args.calls), "bare product"))

    from tabulate import tabulate
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print()
    print(f"L-BFGS iteration cost, {problem.n} x {args.dim} features (rank {problem.r}), 7 classes, {name}, "
          f"torch {torch.__version__}:")
    print(tabulate([(what, f"{seconds * 1e6:,.0f} us" if seconds < 0.01 else f"{seconds:.3f} s", note)
                    for what, seconds, note in rows], headers=["what", "time", "note"], tablefmt="github"))


if __name__ == "__main__":
    main()
