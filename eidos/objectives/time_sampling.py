"""Training-time distributions over s in (0, 1)."""

from __future__ import annotations

import math

import torch

from eidos.config import TimeDistribution


def sample_times(
    batch_size: int, config: TimeDistribution, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """(B,) times s in (0, 1) from the configured proposal.

    lognormal: sigma = exp(N(mean, std^2)), s = (2/pi) arctan(sigma) -- the sCM / FACM proposal mapped to the
    linear path (a point at noise level sigma in TrigFlow has s = arctan(sigma) / (pi/2)).
    logit_normal: s = sigmoid(N(mean, std^2)) (Esser et al. 2024, SD3).
    """
    z = torch.randn(batch_size, generator=generator, device=device) * config.std + config.mean
    if config.sampler == "lognormal":
        return torch.atan(torch.exp(z)) * (2 / math.pi)
    return torch.sigmoid(z)
