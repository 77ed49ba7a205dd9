"""Flow-matching anchor loss: squared error plus a per-position cosine term, over visible tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eidos.model.layers import patchify
from eidos.objectives.tokens import token_mean


def velocity_loss(
    pred: torch.Tensor, target: torch.Tensor, visible: torch.Tensor, patch_size: int, cosine_weight: float = 1.0
) -> torch.Tensor:
    """mean ||pred - target||^2 + cosine_weight mean(1 - cos(pred, target)), per sample, over visible tokens.

    pred, target (B, C, H, W); visible (B, N) bool; the cosine is over channels at each pixel (FACM).
    Returns (B,).
    """
    channels = pred.shape[1]
    pred_tokens = patchify(pred.float(), patch_size)  # (B, N, p*p*C)
    target_tokens = patchify(target.float(), patch_size)
    squared = (pred_tokens - target_tokens).pow(2).mean(dim=-1)  # (B, N)
    if cosine_weight == 0:
        return token_mean(squared, visible)
    pixels = (pred_tokens.shape[0], pred_tokens.shape[1], -1, channels)
    cosine = F.cosine_similarity(pred_tokens.reshape(pixels), target_tokens.reshape(pixels), dim=-1, eps=1e-6)
    return token_mean(squared + cosine_weight * (1 - cosine).mean(dim=-1), visible)
