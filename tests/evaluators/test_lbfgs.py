import numpy as np
import pytest
import torch

from evaluators import lbfgs
from evaluators.lbfgs import LbfgsRun, inverse_hessian_times
from evaluators.linear_solver import LogisticProblem

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _quadratic(n: int, seed: int, device: str = "cpu"):
    """f = 0.5 t'At + 0.5 sum rho t^2 - b't: an ill-conditioned strictly convex quadratic with a known minimiser."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    a = (q * torch.logspace(-2, 2, n, dtype=torch.float64)) @ q.T
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    a, b = a.to(device), b.to(device)

    def objective(theta, rho):
        grad = a @ theta + rho * theta - b
        return 0.5 * theta @ (a @ theta) + 0.5 * (rho * theta) @ theta - b @ theta, grad

    return a, b, objective


def _max_abs(g):
    return g.abs().max()


def test_minimize_reaches_the_known_minimiser():
    a, b, objective = _quadratic(30, seed=0)
    rho = torch.full((30,), 0.5, dtype=torch.float64)
    run = LbfgsRun(30, torch.float64, torch.device("cpu"), objective, _max_abs)
    theta, n_iter, reason = run.minimize(torch.zeros(30, dtype=torch.float64), rho,
                                         lambda t, r: torch.ones_like(t), tol=1e-10, max_iter=500)
    expected = torch.linalg.solve(a + torch.diag(rho), b)
    assert reason == "gtol" and 0 < n_iter < 500
    assert torch.allclose(theta, expected, atol=1e-8)
    assert run.evaluations >= n_iter + 1


def test_reused_buffers_give_the_same_run_as_fresh_ones():
    # the second minimisation must not see the first one's curvature pairs or iterate
    _, _, objective = _quadratic(20, seed=1)
    rho_a = torch.full((20,), 0.1, dtype=torch.float64)
    rho_b = torch.full((20,), 2.0, dtype=torch.float64)
    start = torch.linspace(-1, 1, 20, dtype=torch.float64)
    unit = lambda t, r: torch.ones_like(t)  # noqa: E731
    reused = LbfgsRun(20, torch.float64, torch.device("cpu"), objective, _max_abs)
    reused.minimize(torch.zeros(20, dtype=torch.float64), rho_a, unit, 1e-9, 300)
    second = reused.minimize(start, rho_b, unit, 1e-9, 300)
    fresh = LbfgsRun(20, torch.float64, torch.device("cpu"), objective, _max_abs).minimize(start, rho_b, unit, 1e-9, 300)
    assert torch.equal(second[0], fresh[0]) and second[1:] == fresh[1:]


def test_max_iter_stops_and_says_so():
    _, _, objective = _quadratic(30, seed=2)
    run = LbfgsRun(30, torch.float64, torch.device("cpu"), objective, _max_abs)
    _, n_iter, reason = run.minimize(torch.zeros(30, dtype=torch.float64), torch.zeros(30, dtype=torch.float64),
                                     lambda t, r: torch.ones_like(t), tol=1e-12, max_iter=3)
    assert (n_iter, reason) == (3, "max_iter reached")


@pytest.mark.parametrize("m", [1, 4])
def test_inverse_hessian_satisfies_the_newest_secant_equation(m):
    # every (L-)BFGS update makes H y_newest = s_newest exactly, whatever the older pairs and H0
    gen = torch.Generator().manual_seed(m)
    n = 12
    spd = torch.randn(n, n, generator=gen, dtype=torch.float64)
    spd = spd @ spd.T + n * torch.eye(n, dtype=torch.float64)
    s = torch.randn(m, n, generator=gen, dtype=torch.float64)
    y = s @ spd  # pairs from a convex quadratic: s.y > 0
    precond = torch.rand(n, generator=gen, dtype=torch.float64) + 0.5
    hy = inverse_hessian_times(s, y, precond, y[-1])
    assert torch.allclose(hy, s[-1], atol=1e-10)
    g = torch.randn(n, generator=gen, dtype=torch.float64)
    empty = torch.zeros(0, n, dtype=torch.float64)
    assert torch.equal(inverse_hessian_times(empty, empty, precond, g), precond * g)


def test_a_fitted_problem_is_freed_without_the_cyclic_collector():
    # its L-BFGS buffers (and on CUDA its captured graphs) must go when the problem goes
    import gc
    import weakref
    x, y = _features(n=80, d=6, k=3)
    gc.disable()
    try:
        problem = LogisticProblem(torch.from_numpy(x), torch.from_numpy(y), 3)
        problem.fit(1.0, tol=1e-6)
        alive, run_alive = weakref.ref(problem), weakref.ref(problem._lbfgs())
        del problem
        assert alive() is None and run_alive() is None
    finally:
        gc.enable()


def _features(n=600, d=48, k=5, seed=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = np.maximum(rng.normal(size=(k, d))[y] * 0.6 + rng.normal(size=(n, d)) + 0.5, 0.0)
    return x, y


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_cuda_graphs_replay_the_eager_iterates(monkeypatch):
    x, y = _features()
    xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
    cs = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    monkeypatch.setattr(lbfgs, "USE_CUDA_GRAPHS", False)
    eager = list(LogisticProblem(xt, yt, 5).fit_path(cs, tol=1e-6))
    monkeypatch.setattr(lbfgs, "USE_CUDA_GRAPHS", True)
    problem = LogisticProblem(xt, yt, 5)
    graphed = list(problem.fit_path(cs, tol=1e-6))
    run = problem._lbfgs()
    assert run.graphed and run._trial.graph is not None  # replayed, not merely eager on CUDA
    for e, g in zip(eager, graphed):
        assert g.converged and (e.n_iter, e.reason) == (g.n_iter, g.reason)
        assert torch.allclose(e.weight, g.weight, rtol=0, atol=1e-12)
        assert torch.allclose(e.bias, g.bias, rtol=0, atol=1e-12)


@cuda
def test_failed_capture_falls_back_to_eager(monkeypatch):
    x, y = _features(seed=4)
    xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
    monkeypatch.setattr(lbfgs, "USE_CUDA_GRAPHS", False)
    eager = LogisticProblem(xt, yt, 5).fit(1.0, tol=1e-6)

    def broken(*args, **kwargs):
        raise RuntimeError("capture not supported (test)")
    monkeypatch.setattr(lbfgs, "USE_CUDA_GRAPHS", True)
    monkeypatch.setattr(torch.cuda, "graph", broken)
    monkeypatch.setattr(lbfgs._Replayed, "disabled", False)
    fit = LogisticProblem(xt, yt, 5).fit(1.0, tol=1e-6)
    assert lbfgs._Replayed.disabled
    assert fit.converged and fit.n_iter == eager.n_iter
    assert torch.allclose(fit.weight, eager.weight, rtol=0, atol=1e-12)
