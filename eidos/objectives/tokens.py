"""Losses are means over the model's tokens (its patches): masked training weighs only the tokens the encoder
saw (or, for MAE, the ones it did not)."""

from __future__ import annotations

import torch


def token_mean(per_token: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean over tokens: per_token (B, N), weights (B, N) -> (B,). Zero where a row has no weight."""
    weights = weights.to(per_token.dtype)
    return (per_token * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
