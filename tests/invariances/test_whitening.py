"""Ledoit-Wolf whitening against sklearn/scipy references."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis
from sklearn.covariance import LedoitWolf

from invariances.whitening import Whitening, ledoit_wolf


@pytest.mark.parametrize("n,d", [(60, 8), (25, 40)])  # well- and rank-deficient
def test_ledoit_wolf_matches_sklearn(n, d):
    rng = np.random.default_rng(n + d)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
    reference = LedoitWolf().fit(x)
    location, covariance, shrinkage = ledoit_wolf(x)
    assert shrinkage == pytest.approx(reference.shrinkage_, rel=1e-10)
    np.testing.assert_allclose(location.numpy(), reference.location_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(covariance.numpy(), reference.covariance_, rtol=1e-10, atol=1e-12)


def test_whitening_matches_the_seed_formulas():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6))
    whitening = Whitening.fit(x)
    precision = np.linalg.inv(LedoitWolf().fit(x).covariance_)
    L = whitening.precision_cholesky.numpy()
    np.testing.assert_allclose(L @ L.T, precision, rtol=1e-8, atol=1e-10)
    assert np.allclose(np.triu(L, 1), 0)
    f, g = x[0], x[1] + 0.3
    a, b = (x.mean(0) - f) @ L, (x.mean(0) - g) @ L  # ERIC-I: a = (mu - f) L
    cosine = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert whitening.similarity(torch.tensor(f), torch.tensor(g)).item() == pytest.approx(cosine, rel=1e-10)
    assert whitening.distance(torch.tensor(f), torch.tensor(g)).item() == pytest.approx(mahalanobis(f, g, precision), rel=1e-8)
    batch = whitening.similarity(torch.tensor(x[:5]), torch.tensor(x[5:10]))
    assert batch.shape == (5,)
    assert whitening.similarity(torch.tensor(f), torch.tensor(f)).item() == pytest.approx(1.0)
    assert whitening.describe()["n_samples"] == 50


def test_constant_features_are_a_clear_error():
    with pytest.raises(ValueError, match="constant"):
        Whitening.fit(np.ones((10, 3)))
    with pytest.raises(ValueError, match="N >= 2"):
        Whitening.fit(np.ones((1, 3)))
