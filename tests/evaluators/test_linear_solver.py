import logging

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from evaluators.linear_solver import (
    LogisticFit,
    fit_logistic,
    regularization_path,
    sklearn_equivalent_C,
)


pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny problems


def _blobs(n: int, d: int, k: int, sep: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * sep
    y = rng.integers(0, k, n)
    x = means[y] + rng.normal(size=(n, d)) + 0.5  # offset: the intercept matters
    return x, y


def _sklearn(x, y, C):
    return LogisticRegression(C=C, max_iter=5000, tol=1e-10).fit(x, y)


def _neg_log_loss(y: np.ndarray, p: np.ndarray) -> float:
    return -log_loss(y, p, labels=np.arange(p.shape[1]))


@pytest.mark.parametrize("C", [1e-3, 1.0, 1e3])
def test_matches_sklearn_multiclass(C):
    x, y = _blobs(300, 20, 4, sep=0.7, seed=0)
    fit = fit_logistic(torch.from_numpy(x), torch.from_numpy(y), 4, C, max_iter=5000, tol=1e-10)
    sk = _sklearn(x, y, C)
    assert fit.converged
    p, p_sk = fit.predict_proba(x), sk.predict_proba(x)
    assert np.abs(p - p_sk).max() < 1e-5
    assert abs((p.argmax(1) == y).mean() - sk.score(x, y)) <= 0.005
    w = fit.weight.numpy()
    assert np.abs(w - sk.coef_).max() <= 1e-4 * max(1.0, np.abs(sk.coef_).max())
    # intercepts are identified up to a common shift
    b, b_sk = fit.bias.numpy(), sk.intercept_
    np.testing.assert_allclose(b - b.mean(), b_sk - b_sk.mean(), atol=1e-4 * max(1.0, np.abs(b_sk).max()))


@pytest.mark.parametrize("C_sk", [1e-3, 1.0, 1e3])
def test_matches_sklearn_binary_with_equivalent_C(C_sk):
    # softmax-2 at C equals sklearn's binomial model at 2C (module docstring derivation)
    x, y = _blobs(300, 20, 2, sep=0.5, seed=1)
    C = C_sk / 2
    assert sklearn_equivalent_C(C, 2) == C_sk and sklearn_equivalent_C(C, 3) == C
    fit = fit_logistic(torch.from_numpy(x), torch.from_numpy(y), 2, C, max_iter=5000, tol=1e-10)
    sk = _sklearn(x, y, C_sk)
    assert fit.converged
    p, p_sk = fit.predict_proba(x), sk.predict_proba(x)
    assert np.abs(p - p_sk).max() < 1e-5
    w, b = fit.weight.numpy(), fit.bias.numpy()
    scale = max(1.0, np.abs(sk.coef_).max())
    assert np.abs((w[1] - w[0]) - sk.coef_[0]).max() <= 1e-4 * scale
    assert abs((b[1] - b[0]) - sk.intercept_[0]) <= 1e-4 * scale
    np.testing.assert_allclose(w[1], -w[0], atol=1e-6 * scale)  # symmetric optimum w1 = -w0
    if C_sk <= 1.0:
        # using the *same* C would be a visibly different model
        naive = fit_logistic(torch.from_numpy(x), torch.from_numpy(y), 2, C_sk, tol=1e-10)
        assert np.abs(naive.predict_proba(x) - p_sk).max() > 1e-3


def test_absent_class_gets_zero_probability():
    x, y = _blobs(200, 10, 4, sep=1.0, seed=2)
    y = np.where(y == 2, 3, y)  # class 2 absent, labels {0, 1, 3}
    fit = fit_logistic(torch.from_numpy(x), torch.from_numpy(y), 5, 1.0, tol=1e-10)
    p = fit.predict_proba(x)
    assert p.shape == (200, 5) and fit.converged
    assert np.all(p[:, [2, 4]] == 0.0)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
    sk = _sklearn(x, y, 1.0)  # sklearn only knows the present classes
    assert np.abs(p[:, [0, 1, 3]] - sk.predict_proba(x)).max() < 1e-5


def test_warm_start_uses_fewer_iterations():
    x, y = _blobs(500, 30, 5, sep=0.5, seed=3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    prev = fit_logistic(xt, yt, 5, 1.0)
    warm = fit_logistic(xt, yt, 5, 1.1, init=prev)
    cold = fit_logistic(xt, yt, 5, 1.1)
    assert warm.converged and cold.converged
    assert warm.n_iter < 0.8 * cold.n_iter
    assert np.abs(warm.predict_proba(x) - cold.predict_proba(x)).max() < 1e-4


def test_not_converged_is_reported(caplog):
    x, y = _blobs(200, 10, 3, sep=1.0, seed=4)
    with caplog.at_level(logging.WARNING, logger="evaluators.linear_solver"):
        fit = fit_logistic(torch.from_numpy(x), torch.from_numpy(y), 3, 10.0, max_iter=3)
    assert not fit.converged and fit.n_iter == 3 and fit.grad_norm > 1e-6
    assert "did not converge" in caplog.text


def test_float32_close_to_float64():
    x, y = _blobs(300, 20, 4, sep=0.7, seed=5)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    f64 = fit_logistic(xt, yt, 4, 1.0)
    f32 = fit_logistic(xt, yt, 4, 1.0, dtype=torch.float32)
    assert f32.weight.dtype == torch.float32
    assert np.abs(f64.predict_proba(x) - f32.predict_proba(x)).max() < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, y = _blobs(300, 20, 4, sep=0.7, seed=6)
    cpu = fit_logistic(torch.from_numpy(x), torch.from_numpy(y), 4, 1.0)
    gpu = fit_logistic(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda(), 4, 1.0)
    assert gpu.weight.is_cuda and gpu.weight.dtype == torch.float64
    assert np.abs(cpu.predict_proba(x) - gpu.predict_proba(x)).max() < 1e-8
    gpu32 = fit_logistic(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda(), 4, 1.0, dtype=torch.float32)
    assert gpu32.weight.dtype == torch.float32
    assert np.abs(cpu.predict_proba(x) - gpu32.predict_proba(x)).max() < 1e-3


def _best_C(path: list[tuple[float, float, LogisticFit]]) -> float:
    return max(path, key=lambda t: t[1])[0]


def test_regularization_path_prefers_strong_regularisation_on_noisy_high_dim_data():
    x, y = _blobs(400, 100, 3, sep=0.15, seed=7)  # few samples per dimension, weak signal
    t = lambda a: torch.from_numpy(a)  # noqa: E731
    Cs = np.logspace(-4, 4, 9)
    path = regularization_path(t(x[:100]), t(y[:100]), t(x[100:]), t(y[100:]), 3, Cs, _neg_log_loss)
    assert [c for c, _, _ in path] == sorted(Cs)
    assert all(f.converged for _, _, f in path)
    best = _best_C(path)
    assert best <= 1e-1
    assert max(s for _, s, _ in path) > path[-1][1] + 0.5  # overfitting at C=1e4 is much worse


def test_regularization_path_prefers_weak_regularisation_on_easy_low_dim_data():
    x, y = _blobs(1000, 5, 3, sep=2.0, seed=8)  # many samples per dimension, strong signal
    t = lambda a: torch.from_numpy(a)  # noqa: E731
    Cs = list(np.logspace(-4, 4, 9))[::-1]  # order must not matter
    path = regularization_path(t(x[:600]), t(y[:600]), x[600:], y[600:], 3, Cs, _neg_log_loss)
    assert [c for c, _, _ in path] == sorted(Cs)
    best = _best_C(path)
    assert best >= 1.0
    assert max(s for _, s, _ in path) > path[0][1] + 0.5  # C=1e-4 underfits badly


def _pooled_like(n: int, d: int, k: int, seed: int, noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative, strongly correlated, uncentred features (as pooled ReLU activations) and noisy labels."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 4))
    y = np.argmax(latent[:, :k] + rng.normal(scale=1.0, size=(n, k)), axis=1)
    mix = np.random.default_rng(11).normal(size=(4, d))
    x = np.maximum(latent @ mix + noise * rng.normal(size=(n, d)) + 2.0, 0.0) * 3.0
    return x, y


def _numpy_grad_max(x, y, k, C, w, b):
    """max |grad| of mean CE + ||W||^2 / (2 C N), computed independently in numpy."""
    logits = x @ w.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    return max(np.abs(p.T @ x / len(y) + w / (C * len(y))).max(), np.abs(p.mean(0)).max())


@pytest.mark.parametrize("C", [1e-3, 1.0, 100.0])
def test_ill_conditioned_features_converge_and_match_sklearn(C):
    x, y = _pooled_like(300, 30, 3, seed=0, noise=0.02)
    assert np.linalg.cond(np.cov(x.T)) > 1e4  # the regime where plain L-BFGS on raw features crawls
    fit = fit_logistic(torch.from_numpy(x), torch.from_numpy(y), 3, C, tol=1e-8)
    assert fit.converged and fit.grad_norm <= 1e-8
    assert _numpy_grad_max(x, y, 3, C, fit.weight.numpy(), fit.bias.numpy()) <= 1e-8
    sk = LogisticRegression(C=C, tol=1e-12, max_iter=100_000).fit(x, y)
    assert np.abs(fit.predict_proba(x) - sk.predict_proba(x)).max() < 1e-4


def test_rank_deficient_and_wide_features_match_sklearn():
    x, y = _blobs(60, 5, 3, sep=0.8, seed=9)
    wide = np.concatenate([x, x[:, :3] * 2.0, np.ones((60, 4)), np.zeros((60, 2)), x @ np.ones((5, 90))], axis=1)
    assert wide.shape[1] > wide.shape[0]  # N < D: the kernel-matrix basis
    for C in (0.05, 5.0):
        fit = fit_logistic(torch.from_numpy(wide), torch.from_numpy(y), 3, C, tol=1e-9)
        sk = LogisticRegression(C=C, tol=1e-12, max_iter=100_000).fit(wide, y)
        assert fit.converged
        assert np.abs(fit.predict_proba(wide) - sk.predict_proba(wide)).max() < 1e-4


def test_path_warm_starts_equal_cold_fits_and_select_the_same_C_as_sklearn():
    x, y = _pooled_like(500, 30, 4, seed=1)
    xt, yt, xv, yv = x[:300], y[:300], x[300:], y[300:]
    Cs = list(np.logspace(-4, 2, 7))
    path = regularization_path(torch.from_numpy(xt), torch.from_numpy(yt), xv, yv, 4, Cs, _neg_log_loss, tol=1e-9)
    assert all(f.converged for _, _, f in path)
    sk_scores = []
    for (C, score, fit) in path:
        cold = fit_logistic(torch.from_numpy(xt), torch.from_numpy(yt), 4, C, tol=1e-9)
        assert np.abs(fit.predict_proba(xv) - cold.predict_proba(xv)).max() < 1e-5
        sk = LogisticRegression(C=C, tol=1e-12, max_iter=100_000).fit(xt, yt)
        sk_scores.append(_neg_log_loss(yv, sk.predict_proba(xv)))
        assert score == pytest.approx(sk_scores[-1], abs=1e-5)
    assert _best_C(path) == Cs[int(np.argmax(sk_scores))]


def test_warm_start_from_another_training_set():
    x, y = _pooled_like(300, 20, 3, seed=2)
    first = fit_logistic(torch.from_numpy(x[:200]), torch.from_numpy(y[:200]), 3, 1.0)
    refit = fit_logistic(torch.from_numpy(x), torch.from_numpy(y), 3, 1.0, init=first, tol=1e-9)
    cold = fit_logistic(torch.from_numpy(x), torch.from_numpy(y), 3, 1.0, tol=1e-9)
    assert refit.converged and np.abs(refit.predict_proba(x) - cold.predict_proba(x)).max() < 1e-6
