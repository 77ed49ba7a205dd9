"""Fréchet distance and feature statistics against closed forms."""

import math

import pytest
import torch

from eidos.evaluation import FeatureStatistics, frechet_distance


def stats(mean, covariance):
    return FeatureStatistics(torch.as_tensor(mean, dtype=torch.float64),
                             torch.as_tensor(covariance, dtype=torch.float64), count=0)


def test_commuting_covariances_match_the_closed_form():
    # diagonal covariances commute: d^2 = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    a = stats([0.0, 1.0, 2.0], torch.diag(torch.tensor([1.0, 4.0, 9.0])))
    b = stats([1.0, 1.0, 0.0], torch.diag(torch.tensor([4.0, 1.0, 1.0])))
    expected = (1 + 0 + 4) + ((1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 1) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, abs=1e-9)


def test_non_commuting_covariances_match_the_two_by_two_closed_form():
    # for 2x2 SPD matrices, Tr((S1 S2)^(1/2)) = sqrt(Tr(S1 S2) + 2 sqrt(det(S1 S2)))
    s1 = torch.tensor([[2.0, 0.7], [0.7, 1.0]], dtype=torch.float64)
    s2 = torch.tensor([[1.0, -0.4], [-0.4, 3.0]], dtype=torch.float64)
    product = s1 @ s2
    cross = math.sqrt(product.trace().item() + 2 * math.sqrt(torch.linalg.det(product).item()))
    expected = 0.25 + (s1.trace() + s2.trace()).item() - 2 * cross
    d = frechet_distance(stats([0.5, 0.0], s1), stats([0.0, 0.0], s2))
    assert d == pytest.approx(expected, abs=1e-9)
    assert frechet_distance(stats([0.5, 0.0], s1), stats([0.5, 0.0], s1)) == pytest.approx(0.0, abs=1e-9)
    assert d == pytest.approx(frechet_distance(stats([0.0, 0.0], s2), stats([0.5, 0.0], s1)), abs=1e-9)


def test_statistics_of_samples_recover_the_gaussians():
    generator = torch.Generator().manual_seed(0)
    root = torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.2, -0.3, 0.8]], dtype=torch.float64)
    samples = torch.randn(200_000, 3, generator=generator, dtype=torch.float64) @ root.T + 2.0
    measured = FeatureStatistics.of(samples)
    assert torch.allclose(measured.mean, torch.full((3,), 2.0, dtype=torch.float64), atol=0.01)
    assert torch.allclose(measured.covariance, root @ root.T, atol=0.02)
    assert frechet_distance(measured, stats([2.0] * 3, root @ root.T)) < 1e-3


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(N >= 2, D\)"):
        FeatureStatistics.of(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(stats([0.0], [[1.0]]), stats([0.0, 0.0], torch.eye(2)))
