"""Fréchet distance between two Gaussians fitted to feature sets (Heusel et al. 2017, the FID formula):

    d^2 = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))

All in float64. Tr((S_1 S_2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the
symmetric PSD matrix S_1^(1/2) S_2 S_1^(1/2), which has the same spectrum as S_1 S_2 and avoids a
non-symmetric matrix square root.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FeatureStatistics:
    """Mean (D,) and covariance (D, D) of N feature vectors, float64."""

    mean: torch.Tensor
    covariance: torch.Tensor
    count: int

    @classmethod
    def of(cls, features: torch.Tensor) -> FeatureStatistics:
        """features (N, D), N >= 2; unbiased covariance (as numpy's cov, used by the reference FID code)."""
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"features must be (N >= 2, D), got shape {tuple(features.shape)}")
        x = features.double()
        mean = x.mean(dim=0)
        centred = x - mean
        return cls(mean, centred.T @ centred / (x.shape[0] - 1), x.shape[0])


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(a: FeatureStatistics, b: FeatureStatistics) -> float:
    """Squared Fréchet distance between N(a.mean, a.covariance) and N(b.mean, b.covariance)."""
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"feature sizes differ: {tuple(a.mean.shape)} vs {tuple(b.mean.shape)}")
    root_a = _psd_sqrt(a.covariance)
    cross = torch.linalg.eigvalsh(root_a @ b.covariance @ root_a).clamp_min(0).sqrt().sum()
    mean_term = (a.mean - b.mean).pow(2).sum()
    return float(mean_term + a.covariance.trace() + b.covariance.trace() - 2 * cross)
