"""The invariance metric: cosine similarity of Mahalanobis-whitened features, and the Mahalanobis distance.

Statistics (mean ``mu`` and covariance ``Sigma``) come from a set of dataset features. ``Sigma`` is
the Ledoit-Wolf shrunk covariance (same estimator as ``sklearn.covariance.LedoitWolf``, computed
here in float64 torch), so 2048-d features estimated from ~1000 images stay well conditioned
(ERIC-I/ANTON invert the raw sample covariance plus a 1e-6 ridge). With ``L`` the Cholesky factor
of the precision, ``L L^T = Sigma^-1``, a feature ``f`` is whitened as ``a = (mu - f) L`` and

* similarity ``S(f, g) = cos(a_f, a_g)``
* distance ``D(f, g) = sqrt((f - g)^T Sigma^-1 (f - g)) = ||a_f - a_g||``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def ledoit_wolf(features: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Ledoit-Wolf shrinkage estimate, as ``sklearn.covariance.LedoitWolf().fit(X)``.

    Args:
        features: [N, D] samples.
    Returns:
        (location [D], shrunk covariance [D, D], shrinkage in [0, 1]), float64.
    """
    x = torch.as_tensor(features).to(torch.float64)
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"need features [N >= 2, D], got shape {tuple(x.shape)}")
    n, d = x.shape
    location = x.mean(0)
    xc = x - location
    empirical = xc.T @ xc / n
    mu = torch.trace(empirical) / d
    # Ledoit & Wolf (2004) shrinkage intensity, written like sklearn's ledoit_wolf_shrinkage
    x2 = xc ** 2
    beta_sum = (x2.T @ x2).sum()
    delta_sum = (empirical ** 2).sum()  # = sum((X^T X)^2) / n^2
    beta = (beta_sum / n - delta_sum) / (d * n)
    delta = (delta_sum - 2.0 * mu * torch.trace(empirical) + d * mu ** 2) / d
    beta = torch.minimum(beta, delta)
    shrinkage = 0.0 if float(beta) == 0.0 else float(beta / delta)
    shrunk = (1.0 - shrinkage) * empirical
    shrunk.diagonal().add_(shrinkage * mu)
    return location, shrunk, shrinkage


@dataclass
class Whitening:
    """Feature statistics for the invariance metric.

    Attributes:
        mean: [D]; precision_cholesky: L [D, D] lower triangular with L L^T = Sigma^-1 (float64);
        shrinkage: the Ledoit-Wolf intensity; n_samples: images the statistics came from.
    """

    mean: torch.Tensor
    precision_cholesky: torch.Tensor
    shrinkage: float
    n_samples: int

    @classmethod
    def fit(cls, features: torch.Tensor | np.ndarray) -> "Whitening":
        """Statistics of ``features`` [N, D] (Ledoit-Wolf covariance, then precision and its Cholesky)."""
        location, covariance, shrinkage = ledoit_wolf(features)
        d = covariance.shape[0]
        identity = torch.eye(d, dtype=torch.float64)
        try:
            precision = torch.cholesky_solve(identity, torch.linalg.cholesky(covariance))
        except RuntimeError as error:  # only when the features are constant (zero covariance)
            raise ValueError(f"feature covariance is singular even after shrinkage ({error}); are the encoder's "
                             f"features constant on this dataset?") from None
        precision = (precision + precision.T) / 2
        return cls(location, torch.linalg.cholesky(precision), shrinkage, int(len(features)))

    def whiten(self, features: torch.Tensor | np.ndarray) -> torch.Tensor:
        """[..., D] -> ``(mean - f) L`` [..., D] (float64)."""
        f = torch.as_tensor(features).to(torch.float64)
        return (self.mean - f) @ self.precision_cholesky

    def similarity(self, f: torch.Tensor | np.ndarray, g: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Cosine similarity of the whitened features; broadcasting [..., D] x [..., D] -> [...]."""
        a, b = self.whiten(f), self.whiten(g)
        return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)

    def distance(self, f: torch.Tensor | np.ndarray, g: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Mahalanobis distance under the shrunk covariance; [..., D] x [..., D] -> [...]."""
        diff = torch.as_tensor(f).to(torch.float64) - torch.as_tensor(g).to(torch.float64)
        return torch.linalg.vector_norm(diff @ self.precision_cholesky, dim=-1)

    def describe(self) -> dict:
        return {"estimator": "ledoit-wolf", "shrinkage": self.shrinkage, "n_samples": self.n_samples,
                "dim": int(self.mean.shape[0])}
