"""The training loss of Eidos: flow-matching anchor + flow-anchored consistency + MAE, with CFG baked into
the targets (DESIGN §3). One call computes the total loss for a batch and returns its named parts.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from eidos.config import ObjectiveConfig
from eidos.data.batch import Batch
from eidos.model.masking import TokenMask, num_kept_tokens
from eidos.objectives.consistency import (
    adaptive_consistency_loss,
    consistency_target,
    consistency_weight,
    velocity_and_time_derivative,
)
from eidos.objectives.flow_matching import velocity_loss
from eidos.objectives.mae import masked_reconstruction_loss
from eidos.objectives.path import conditional_velocity, consistency_condition, flow_condition, interpolate, per_sample
from eidos.objectives.time_sampling import sample_times


def guided_velocity(
    u_cond: torch.Tensor,
    u_uncond: torch.Tensor,
    s: torch.Tensor,
    dropped: torch.Tensor,
    guidance_scale: float,
    interval: tuple[float, float],
) -> torch.Tensor:
    """u* = u_unc + w (u_c - u_unc) for samples with s in `interval` that kept their text; u* = u_c otherwise."""
    lo, hi = interval
    guided = (s >= lo) & (s <= hi) & ~dropped
    w = per_sample(torch.where(guided, guidance_scale, 1.0).to(u_cond.dtype), u_cond)
    return u_uncond + w * (u_cond - u_uncond)


def patch_size_of(x: torch.Tensor, removed: torch.Tensor) -> int:
    """The model's patch size, from the image side and the token count of its mask."""
    grid = math.isqrt(removed.shape[1])
    return x.shape[-1] // grid


class FACMObjective:
    """`objective(model, batch, generator) -> (loss, parts)` with parts total, fm, cm, mae (detached).

    mask_ratio is the stage's fraction of tokens hidden from the encoder (0.5 in stage 1, 0 in the finetune).
    Every random draw (times, noise, text dropout, mask) uses `generator`, so a step is reproducible from it.
    """

    def __init__(self, config: ObjectiveConfig, mask_ratio: float = 0.0):
        if not 0 <= mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.config = config
        self.mask_ratio = mask_ratio

    def __call__(
        self, model: nn.Module, batch: Batch, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        x0 = batch.latents.float()
        size, device = x0.shape[0], x0.device
        s = sample_times(size, cfg, generator, device)
        eps = torch.randn(x0.shape, generator=generator, device=device)
        dropped = torch.rand(size, generator=generator, device=device) < cfg.text_dropout
        x_s = interpolate(x0, eps, s)
        u_cond = conditional_velocity(x0, eps)
        text = batch.text.model_kwargs()

        # Flow anchor branch: instantaneous velocity at condition -s (draws the token mask for this example).
        flow = model(x_s, flow_condition(s), **text, drop_text=dropped, mask_ratio=self.mask_ratio, generator=generator)
        removed = flow.mask
        token_mask = None
        if self.mask_ratio > 0:
            token_mask = TokenMask.from_removed(removed, num_kept_tokens(removed.shape[1], self.mask_ratio))
        patch_size = patch_size_of(x0, removed)

        target_u = u_cond
        if cfg.guidance_scale != 1:
            with torch.no_grad():
                everyone = torch.ones_like(dropped)
                u_uncond = model(x_s, flow_condition(s), **text, drop_text=everyone, token_mask=token_mask).sample
            target_u = guided_velocity(u_cond, u_uncond.float(), s, dropped, cfg.guidance_scale, cfg.guidance_interval)

        visible = ~removed
        fm = velocity_loss(flow.sample, target_u, visible, patch_size).mean()
        cm = torch.zeros((), device=device)
        if cfg.consistency_weight > 0:
            # The consistency branch trains on the first `k` examples only (its JVP dominates the step's cost).
            k = max(1, math.ceil(size * cfg.consistency_batch_fraction))
            sub = slice(0, k)
            sub_text = batch.text[sub].model_kwargs()
            sub_mask = None if token_mask is None else token_mask[sub]
            use_math = cfg.tangent == "jvp"  # fused SDPA has no forward-mode AD

            def average_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return model(
                    x, consistency_condition(t), **sub_text, drop_text=dropped[sub], token_mask=sub_mask,
                    math_attention=use_math,
                ).sample

            G, dG = velocity_and_time_derivative(
                average_velocity, x_s[sub], s[sub], target_u[sub], cfg.tangent, cfg.finite_difference_step
            )
            target = consistency_target(G, dG, target_u[sub], s[sub])
            per_example = adaptive_consistency_loss(G, target, visible[sub], patch_size, cfg.adaptive_loss_eps)
            cm = (consistency_weight(s[sub]) * per_example).mean()
        mae = torch.zeros((), device=device)
        if self.mask_ratio > 0 and cfg.mae_weight > 0:
            mae = masked_reconstruction_loss(flow.sample, x_s, removed, patch_size).mean()

        total = cfg.fm_weight * fm + cfg.consistency_weight * cm + cfg.mae_weight * mae
        parts = {"total": total, "fm": fm, "cm": cm, "mae": mae}
        return total, {name: value.detach() for name, value in parts.items()}
