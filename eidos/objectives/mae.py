"""MaskDiT's auxiliary MAE loss: reconstruct the (patch-normalised) noisy input at the removed tokens."""

from __future__ import annotations

import torch

from eidos.model.layers import patchify
from eidos.objectives.tokens import token_mean


def masked_reconstruction_loss(
    pred: torch.Tensor, x_s: torch.Tensor, removed: torch.Tensor, patch_size: int
) -> torch.Tensor:
    """Per-sample MSE at removed tokens between pred and x_s, each x_s patch normalised to zero mean and unit
    variance (Zheng et al. 2023, following MAE). pred, x_s (B, C, H, W); removed (B, N) bool. Returns (B,)."""
    target = patchify(x_s.float(), patch_size)  # (B, N, p*p*C)
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    target = (target - mean) / (var + 1e-6).sqrt()
    squared = (patchify(pred.float(), patch_size) - target).pow(2).mean(dim=-1)  # (B, N)
    return token_mean(squared, removed)
