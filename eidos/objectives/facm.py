"""The training loss of Eidos: flow-matching anchor + flow-anchored consistency + MAE (DESIGN §3).

Two phases, in FACM's own order (Peng et al. 2025: pretrain both branches as flow, then train consistency):
- flow phase (`consistency=False`): one forward. The consistency branch's share of the batch gets the
  condition +s, the rest -s, and both regress the conditional velocity u = eps - x0. No JVP, no guidance:
  as cheap as plain flow matching, and the consistency branch starts the next phase as a good flow. With a
  branch embedding (zero at the start) the +s branch is the -s branch until the consistency phase trains it,
  so `pretrain_consistency_branch: false` gives the whole batch to the flow branch instead.
- consistency phase (`consistency=True`): the flow anchor on the whole batch, plus the FACM consistency loss
  on its share, with its own time draw. Its velocity u* comes from the `consistency_teacher`:
  "frozen" distils the flow branch of a frozen copy of the weights (the trainer passes the EMA weights of the
  stage's start), "flow_branch" the model's own live flow branch, sg(G(x, -s)); both with classifier-free
  guidance u* = G_unc + w (G_c - G_unc): a deterministic ODE to be consistent with, so one-step samples are
  sharp rather than the blurred mean of single-sample targets; the anchor then learns plain conditional flow
  (guidance is applied at flow-sampling time). "sample" uses u_c = eps - x0 from the one sample and bakes
  guidance into both branches' targets (FACM trained from scratch).
One call computes the total loss for a batch and returns its named parts.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from eidos.batch import Batch, TextEmbeddings
from eidos.config import ObjectiveConfig
from eidos.model.masking import TokenMask, num_kept_tokens
from eidos.objectives.consistency import (
    adaptive_consistency_loss,
    consistency_target,
    consistency_weight,
    velocity_and_time_derivative,
)
from eidos.objectives.flow_matching import velocity_loss
from eidos.objectives.mae import masked_reconstruction_loss
from eidos.objectives.path import (
    conditional_velocity,
    consistency_condition,
    flow_condition,
    guided_pair,
    interpolate,
    per_sample,
)
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


@torch.no_grad()
def unconditional_velocity(
    model: nn.Module, x_s: torch.Tensor, s: torch.Tensor, text: TextEmbeddings, token_mask: TokenMask | None,
) -> torch.Tensor:
    """sg(G(x_s, -s)) with every sample's text replaced by the null text; float32 (B, C, H, W)."""
    everyone = torch.ones(x_s.shape[0], dtype=torch.bool, device=x_s.device)
    out = model(x_s, flow_condition(s), **text.model_kwargs(), drop_text=everyone, token_mask=token_mask)
    return out.sample.float()


@torch.no_grad()
def teacher_velocity(
    model: nn.Module, x_s: torch.Tensor, s: torch.Tensor, text: TextEmbeddings, dropped: torch.Tensor,
    cfg: ObjectiveConfig,
) -> torch.Tensor:
    """The flow branch's guided velocity u* = G_unc + w (G_c - G_unc) at (x_s, -s), all tokens, no gradient;
    (B, C, H, W) in at least float32."""
    u_cond, u_uncond = guided_pair(model, x_s, s, TextEmbeddings(text.pooled, text.tokens, text.mask, drop=dropped))
    return guided_velocity(u_cond, u_uncond, s, dropped, cfg.guidance_scale, cfg.guidance_interval)


class FACMObjective:
    """`objective(model, batch, generator) -> (loss, parts)` with parts total, fm, cm, mae (detached).

    patch_size is the model's (losses are means over its tokens); mask_ratio is the stage's fraction of tokens
    hidden from the encoder: the objective draws one `TokenMask` per example and every forward of that example
    takes it. consistency picks the phase (module docstring); teacher is the frozen network of
    consistency_teacher "frozen". In the flow phase "cm" is the consistency branch's flow loss (0 without
    pretraining). Every random draw (times, noise, text dropout, mask) uses `generator`, so a step is
    reproducible from it.
    """

    def __init__(
        self, config: ObjectiveConfig, *, patch_size: int, mask_ratio: float = 0.0, consistency: bool = True,
        teacher: nn.Module | None = None,
    ):
        num_kept_tokens(1, mask_ratio)  # refuses a ratio outside [0, 1)
        if consistency and config.consistency_teacher == "frozen" and config.consistency_weight > 0 \
                and teacher is None:
            raise ValueError("objective.consistency_teacher='frozen' needs the frozen teacher network (teacher=...)")
        self.config = config
        self.patch_size = patch_size
        self.mask_ratio = mask_ratio
        self.consistency = consistency
        self.teacher = teacher

    def consistency_share(self, batch_size: int) -> int:
        """How many examples (the first k of the batch) train the consistency branch; 0 = plain flow matching."""
        if self.config.consistency_weight == 0:
            return 0
        return max(1, math.ceil(batch_size * self.config.consistency_batch_fraction))

    def __call__(
        self, model: nn.Module, batch: Batch, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        x0 = batch.latents.float()
        size, device = x0.shape[0], x0.device
        k = self.consistency_share(size)
        s = sample_times(size, cfg.flow_times, generator, device)
        s_cm = sample_times(k, cfg.consistency_times, generator, device)  # the consistency branch's own draw
        eps = torch.randn(x0.shape, generator=generator, device=device)
        dropped = torch.rand(size, generator=generator, device=device) < cfg.text_dropout
        token_mask = None
        if self.mask_ratio > 0:
            token_mask = TokenMask.random(size, self._num_tokens(x0), self.mask_ratio, generator, device)
        phase = self._consistency_phase if self.consistency else self._flow_phase
        return phase(model, batch, x0, eps, s, s_cm, dropped, token_mask)

    def _num_tokens(self, x0: torch.Tensor) -> int:
        return (x0.shape[-2] // self.patch_size) * (x0.shape[-1] // self.patch_size)

    def _removed(self, token_mask: TokenMask | None, x0: torch.Tensor) -> torch.Tensor:
        """(B, N) bool, True where the encoder did not see the token."""
        if token_mask is None:
            return torch.zeros(x0.shape[0], self._num_tokens(x0), dtype=torch.bool, device=x0.device)
        return token_mask.removed

    def _mae(self, pred, x_s, removed, device) -> torch.Tensor:
        if self.mask_ratio > 0 and self.config.mae_weight > 0:
            return masked_reconstruction_loss(pred, x_s, removed, self.patch_size).mean()
        return torch.zeros((), device=device)

    def _parts(self, fm, cm, mae) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        total = cfg.fm_weight * fm + cfg.consistency_weight * cm + cfg.mae_weight * mae
        parts = {"total": total, "fm": fm, "cm": cm, "mae": mae}
        return total, {name: value.detach() for name, value in parts.items()}

    def _flow_phase(self, model, batch, x0, eps, s, s_cm, dropped, token_mask):
        """Both branches regress u = eps - x0; the first k examples take condition +s (FACM's pretraining; k = 0
        without it: the whole batch trains the flow branch)."""
        k = s_cm.shape[0] if self.config.pretrain_consistency_branch else 0
        times = torch.cat([s_cm[:k], s[k:]])
        condition = torch.cat([consistency_condition(s_cm[:k]), flow_condition(s[k:])])
        x_s = interpolate(x0, eps, times)
        pred = model(x_s, condition, **batch.text.model_kwargs(), drop_text=dropped, token_mask=token_mask).sample
        removed = self._removed(token_mask, x0)
        per_example = velocity_loss(pred, conditional_velocity(x0, eps), ~removed, self.patch_size,
                                    self.config.cosine_weight)
        # Each branch's loss is a mean over its own examples; the branches are weighted like in the next phase.
        fm = per_example[k:].mean() if k < x0.shape[0] else torch.zeros((), device=x0.device)
        cm = per_example[:k].mean() if k > 0 else torch.zeros((), device=x0.device)
        return self._parts(fm, cm, self._mae(pred, x_s, removed, x0.device))

    def _consistency_phase(self, model, batch, x0, eps, s, s_cm, dropped, token_mask):
        cfg = self.config
        device = x0.device
        x_s = interpolate(x0, eps, s)
        u_cond = conditional_velocity(x0, eps)
        pred = model(x_s, flow_condition(s), **batch.text.model_kwargs(), drop_text=dropped,
                     token_mask=token_mask).sample
        removed = self._removed(token_mask, x0)
        sample_teacher = cfg.consistency_teacher == "sample"

        # Flow anchor: plain conditional flow, or (sample teacher) guidance baked into its target.
        target_u = u_cond
        if sample_teacher and cfg.guidance_scale != 1:
            u_uncond = unconditional_velocity(model, x_s, s, batch.text, token_mask)
            target_u = guided_velocity(u_cond, u_uncond, s, dropped, cfg.guidance_scale, cfg.guidance_interval)
        visible = ~removed
        fm = velocity_loss(pred, target_u, visible, self.patch_size, cfg.cosine_weight).mean()

        cm = torch.zeros((), device=device)
        k = s_cm.shape[0]
        if k > 0:
            sub = slice(0, k)
            sub_text = batch.text[sub]
            sub_mask = None if token_mask is None else token_mask[sub]
            x_cm = interpolate(x0[sub], eps[sub], s_cm)
            if sample_teacher:
                u_star = u_cond[sub]
                if cfg.guidance_scale != 1:
                    u_uncond = unconditional_velocity(model, x_cm, s_cm, sub_text, sub_mask)
                    u_star = guided_velocity(u_star, u_uncond, s_cm, dropped[sub], cfg.guidance_scale,
                                             cfg.guidance_interval)
            else:
                teacher = self.teacher if cfg.consistency_teacher == "frozen" else model
                u_star = teacher_velocity(teacher, x_cm, s_cm, sub_text, dropped[sub], cfg)

            def average_velocity(x: torch.Tensor, t: torch.Tensor, forward_mode: bool = False) -> torch.Tensor:
                return model(
                    x, consistency_condition(t), **sub_text.model_kwargs(), drop_text=dropped[sub],
                    token_mask=sub_mask, math_attention=forward_mode,
                ).sample

            G, dG = velocity_and_time_derivative(
                average_velocity, x_cm, s_cm, u_star, cfg.tangent, cfg.finite_difference_step, cfg.tangent_precision
            )
            target = consistency_target(G, dG, u_star, s_cm)
            per_example = adaptive_consistency_loss(G, target, visible[sub], self.patch_size, cfg.adaptive_loss_eps)
            cm = (consistency_weight(s_cm) * per_example).mean()
        return self._parts(fm, cm, self._mae(pred, x_s, removed, device))
