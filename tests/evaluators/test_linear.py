"""The linear probe's two protocols: ``parity`` against a port of ssl-transfer's selection loop (with
scikit-learn 0.23's lbfgs/multinomial code path ported to numpy), ``converged`` against its rules."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from scipy import optimize
from scipy.special import logsumexp
from sklearn.linear_model import LogisticRegression as ModernLogisticRegression
from sklearn.metrics import confusion_matrix
from sklearn.preprocessing import LabelBinarizer

from evaluators.linear import LINEAR_DEFAULTS, check_linear_options, linear_probe, resolved_max_iter, run_linear
from evaluators.linear_parity import LegacyMultinomialLR, legacy_loss_and_grad, parity_cs
from evaluators.registry import EVALUATORS


pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny problems


# --- a port of scikit-learn 0.23's LogisticRegression(solver='lbfgs', multi_class='multinomial') -------------

def _multinomial_loss(w, X, Y, alpha, sample_weight):
    n_classes, n_features = Y.shape[1], X.shape[1]
    fit_intercept = w.size == (n_classes * (n_features + 1))
    w = w.reshape(n_classes, -1)
    sample_weight = sample_weight[:, np.newaxis]
    if fit_intercept:
        intercept, w = w[:, -1], w[:, :-1]
    else:
        intercept = 0
    p = X @ w.T
    p += intercept
    p -= logsumexp(p, axis=1)[:, np.newaxis]
    loss = -(sample_weight * Y * p).sum()
    loss += 0.5 * alpha * np.dot(w.ravel(), w.ravel())
    p = np.exp(p, p)
    return loss, p, w


def _multinomial_loss_grad(w, X, Y, alpha, sample_weight):
    n_classes, n_features = Y.shape[1], X.shape[1]
    fit_intercept = w.size == n_classes * (n_features + 1)
    grad = np.zeros((n_classes, n_features + bool(fit_intercept)), dtype=X.dtype)
    loss, p, w = _multinomial_loss(w, X, Y, alpha, sample_weight)
    sample_weight = sample_weight[:, np.newaxis]
    diff = sample_weight * (p - Y)
    grad[:, :n_features] = diff.T @ X
    grad[:, :n_features] += alpha * w
    if fit_intercept:
        grad[:, -1] = diff.sum(axis=0)
    return loss, grad.ravel(), p


class PortedLogReg:
    """``LogisticRegression(solver='lbfgs', multi_class='multinomial', warm_start=True)`` of sklearn 0.23."""

    def __init__(self, max_iter=100, tol=1e-4):
        self.C, self.max_iter, self.tol = 1.0, max_iter, tol

    def set_params(self, C):
        self.C = C

    def fit(self, X, y):
        X = np.asarray(X, dtype=np.float64)
        self.classes_ = classes = np.unique(y)
        warm_start_coef = getattr(self, "coef_", None)
        if warm_start_coef is not None:
            warm_start_coef = np.append(warm_start_coef, self.intercept_[:, np.newaxis], axis=1)
        n_features = X.shape[1]
        lbin = LabelBinarizer()
        Y_multi = lbin.fit_transform(y)
        if Y_multi.shape[1] == 1:
            Y_multi = np.hstack([1 - Y_multi, Y_multi])
        w0 = np.zeros((classes.size, n_features + 1), order="F", dtype=X.dtype)
        coef = warm_start_coef
        if coef is not None:
            n_classes = 1 if classes.size == 2 else classes.size
            assert coef.shape[0] == n_classes
            if n_classes == 1:
                w0[0, :coef.shape[1]] = -coef
                w0[1, :coef.shape[1]] = coef
            else:
                w0[:, :coef.shape[1]] = coef
        w0 = w0.ravel()
        opt_res = optimize.minimize(lambda x, *args: _multinomial_loss_grad(x, *args)[0:2], w0, method="L-BFGS-B",
                                    jac=True, args=(X, Y_multi, 1. / self.C, np.ones(X.shape[0])),
                                    options={"gtol": self.tol, "maxiter": self.max_iter})
        multi_w0 = np.reshape(opt_res.x, (max(2, classes.size), -1))
        if classes.size == 2:
            multi_w0 = multi_w0[1][np.newaxis, :]
        self.intercept_, self.coef_ = multi_w0[:, -1], multi_w0[:, :-1]
        return self

    def decision_function(self, X):
        scores = X @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, X):
        scores = self.decision_function(X)
        indices = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[indices]

    def score(self, X, y):
        return float(np.mean(self.predict(X) == y))


# --- ssl-transfer linear.py: LogisticRegression.fit_logistic_regression and LinearTester.validate/evaluate ----

def fit_logistic_regression(clf, metric, X_train, y_train, X_test, y_test):
    if metric == "accuracy":
        clf.fit(X_train, y_train)
        return 100. * clf.score(X_test, y_test)
    elif metric == "mean per-class accuracy":
        clf.fit(X_train, y_train)
        pred_test = clf.predict(X_test)
        cm = confusion_matrix(y_test, pred_test)
        cm = cm.diagonal() / cm.sum(axis=1)
        return 100. * cm.mean()


def ssl_transfer_linear(X_train, y_train, X_val, y_val, X_trainval, y_trainval, X_test, metric):
    clf = PortedLogReg()
    wd_range = torch.logspace(-6, 5, 45)
    best_params = {}
    best_score = 0
    for wd in wd_range:
        C = 1. / wd.item()
        clf.set_params(C=C)
        test_score = fit_logistic_regression(clf, metric, X_train, y_train, X_val, y_val)
        if test_score > best_score:
            best_score = test_score
            best_params["C"] = C
    clf.set_params(C=best_params["C"])
    clf.fit(X_trainval, y_trainval)
    return best_params["C"], clf.predict(X_test)


# --- fixed problems ----------------------------------------------------------------------------------------------

def _relu_features(n: int, k: int, d: int, seed: int, sep: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative, correlated, uncentred features (like pooled ReLU activations) [n, d], labels [n]."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).normal(size=(d, d)) / np.sqrt(d)
    means = np.random.default_rng(7 + k).normal(size=(k, d)) * sep
    y = np.arange(n) % k
    x = np.maximum((means[y] + rng.normal(size=(n, d))) @ mix + 0.8, 0.0)
    return x.astype(np.float32), y


def _splits(k: int, d: int, n_train: int = 90, n_val: int = 30, n_test: int = 60):
    return [_relu_features(n, k, d, seed) for n, seed in ((n_train, 0), (n_val, 1), (n_test, 2))]


@pytest.mark.parametrize("k, metric, primary", [(3, "accuracy", "auroc"), (2, "accuracy", "auroc"),
                                                (4, "mean per-class accuracy", "balanced_accuracy")])
def test_parity_protocol_equals_ported_ssl_transfer_loop(feature_context, k, metric, primary):
    (xtr, ytr), (xva, yva), (xte, yte) = _splits(k, d=24)
    want_C, want_pred = ssl_transfer_linear(xtr, ytr, xva, yva, np.concatenate([xtr, xva]),
                                            np.concatenate([ytr, yva]), xte, metric)
    ctx = feature_context((xtr, ytr), (xva, yva), (xte, yte), k)  # primary: auto -> accuracy / mean per-class acc
    split = ctx.features
    resolved, _, proba, _ = linear_probe(split("train"), split("val"), split("test"), k,
                                      dict(LINEAR_DEFAULTS, protocol="parity"), primary, ctx.device)
    assert resolved["protocol"] == "parity" and resolved["max_iter"] == 100
    assert resolved["C"] == want_C
    np.testing.assert_array_equal(proba.argmax(1), want_pred)
    assert resolved["unconverged_C"], "max_iter=100 binds at large C on these features"


def test_parity_ties_go_to_the_largest_C_and_converged_ties_to_the_smallest(feature_context):
    (xtr, ytr), (xva, yva), (xte, yte) = _splits(3, d=24)
    ctx = feature_context((xtr, ytr), (xva, yva), (xte, yte), 3)
    ctx.primary_metric = lambda default="balanced_accuracy": "accuracy"
    parity = run_linear(ctx, dict(LINEAR_DEFAULTS, protocol="parity", n_boot=10))
    curve = parity.extra["val_curve"]  # path order: C from 1e6 down
    best = max(p["score"] for p in curve)
    tied = [p["C"] for p in curve if p["score"] == best]
    assert len(tied) > 1 and parity.resolved["C"] == max(tied)
    converged = run_linear(ctx, dict(LINEAR_DEFAULTS, selection_metric="accuracy", n_boot=10))
    curve = converged.extra["val_curve"]
    best = max(p["score"] for p in curve)
    tied = [p["C"] for p in curve if p["score"] == best]
    assert len(tied) > 1 and converged.resolved["C"] == min(tied)
    assert converged.resolved["unconverged_C"] == [] and converged.resolved["converged"]
    assert all(p["converged"] for p in curve)


def test_a_grid_of_one_repeated_value_fits_it_once(feature_context):
    # found by the options property test: wd_min_exp == wd_max_exp with wd_steps > 1 is a valid grid
    (xtr, ytr), (xva, yva), (xte, yte) = _splits(3, d=8)
    ctx = feature_context((xtr, ytr), (xva, yva), (xte, yte), 3)
    out = run_linear(ctx, dict(LINEAR_DEFAULTS, wd_min_exp=0.0, wd_max_exp=0.0, wd_steps=3, n_boot=5))
    assert out.resolved["C"] == 1.0 and [p["C"] for p in out.extra["val_curve"]] == [1.0]


def test_parity_cs_are_ssl_transfers_float32_grid():
    cs = parity_cs(-6, 5, 45)
    assert cs == [1. / wd.item() for wd in torch.logspace(-6, 5, 45)]
    assert cs[0] == pytest.approx(1e6, rel=1e-6) and cs[-1] == pytest.approx(1e-5, rel=1e-6)


@pytest.mark.parametrize("k", [2, 3])
def test_legacy_objective_converges_to_todays_sklearn_minimiser(k):
    # the 0.2x objective is today's times N (same minimiser); binary softmax-2 at C == binomial at 2C.
    # Without an iteration limit the legacy fit stops at scipy's default ftol (2.2e-9 relative): ~1e-5 here
    (x, y), (xv, _), _ = _splits(k, d=8, n_train=120)
    C = 0.3
    legacy = LegacyMultinomialLR(max_iter=20000, tol=1e-9).fit(x, y, C)
    modern = ModernLogisticRegression(C=2 * C if k == 2 else C, tol=1e-12, max_iter=20000).fit(x.astype(np.float64), y)
    np.testing.assert_allclose(legacy.predict_proba(xv), modern.predict_proba(xv.astype(np.float64)), atol=1e-4)
    assert legacy.status_ == 0 and legacy.coef_.shape == (1 if k == 2 else k, 8)


def test_legacy_loss_and_gradient_equal_the_ported_0_23_code():
    (x, y), _, _ = _splits(3, d=6, n_train=40)
    w = np.random.default_rng(3).normal(size=3 * 7)
    Y = LabelBinarizer().fit_transform(y).astype(np.float64)
    want_loss, want_grad, _ = _multinomial_loss_grad(w, x.astype(np.float64), Y, 1 / 0.7, np.ones(len(y)))
    loss, grad = legacy_loss_and_grad(w, torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(Y), 1 / 0.7)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("options, message", [
    ({"protocol": "sklearn"}, "option 'protocol' must be one of 'converged', 'parity'"),
    ({"protocol": "parity", "selection_metric": "auroc"}, "selects on accuracy or mean_per_class_accuracy"),
    ({"protocol": "parity", "refit_on": "train"}, "fixes refit_on=train+val"),
    ({"selection_metric": "mean_per_class_accuracy"}, "protocol=converged uses balanced_accuracy"),
    ({"max_iter": "lots"}, "option 'max_iter' must be 'auto' or an integer >= 0"),
    ({"tol": 0}, "option 'tol' must be"),
])
def test_bad_options_fail_before_any_work(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_linear_options(dict(LINEAR_DEFAULTS, **options))
    with pytest.raises(ValueError, match=re.escape(message)):
        EVALUATORS.get("linear").resolve_options(None, options)


def test_max_iter_auto_resolves_per_protocol():
    assert resolved_max_iter(dict(LINEAR_DEFAULTS)) == 10_000
    assert resolved_max_iter(dict(LINEAR_DEFAULTS, protocol="parity")) == 100
    assert resolved_max_iter(check_linear_options(dict(LINEAR_DEFAULTS, max_iter="250"))) == 250


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_choice_and_predictions(feature_context):
    (xtr, ytr), (xva, yva), (xte, yte) = _splits(3, d=24)
    ctx = feature_context((xtr, ytr), (xva, yva), (xte, yte), 3)
    split = ctx.features
    runs = [linear_probe(split("train"), split("val"), split("test"), 3, dict(LINEAR_DEFAULTS), "accuracy",
                         torch.device(device)) for device in ("cpu", "cuda")]
    (cpu, _, p_cpu, _), (gpu, _, p_gpu, _) = runs
    assert cpu["C"] == gpu["C"] and gpu["unconverged_C"] == cpu["unconverged_C"] == []
    np.testing.assert_array_equal(p_cpu.argmax(1), p_gpu.argmax(1))
    assert np.abs(p_cpu - p_gpu).max() < 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_legacy_arithmetic_equals_cpu():
    # parity's fits stop at max_iter=100 far from the optimum, where summation-order differences
    # between devices can change the path (as between any two machines running ssl-transfer); the
    # function they minimise is the same to rounding
    (x, y), _, _ = _splits(3, d=24)
    w = np.random.default_rng(4).normal(size=3 * 25)
    target = torch.nn.functional.one_hot(torch.as_tensor(y), 3).double()
    cpu = legacy_loss_and_grad(w, torch.as_tensor(x, dtype=torch.float64), target, 0.5)
    gpu = legacy_loss_and_grad(w, torch.as_tensor(x, dtype=torch.float64).cuda(), target.cuda(), 0.5)
    assert gpu[0] == pytest.approx(cpu[0], rel=1e-12)
    np.testing.assert_allclose(gpu[1], cpu[1], rtol=1e-10, atol=1e-10)
