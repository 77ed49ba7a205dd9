"""The one time convention of the project (DESIGN §3, the diffusers one).

s in [0, 1]: s = 0 is data, s = 1 is noise; x_s = (1 - s) x0 + s eps; the conditional velocity is
u = dx_s/ds = eps - x0. The network's signed time condition is t = -s for the flow branch (instantaneous
velocity) and t = s for the consistency branch (average velocity from s down to 0).
"""

from __future__ import annotations

import torch
from torch import nn

from eidos.batch import TextEmbeddings


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Upcast bf16/fp16 to float32; keep float64 (tests check identities in double precision). Targets and
    sampler states live in this precision whatever the network's autocast dtype."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def per_sample(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against `like`."""
    return s.reshape(-1, *([1] * (like.ndim - 1)))


def interpolate(x0: torch.Tensor, eps: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x_s = (1 - s) x0 + s eps; x0, eps (B, C, H, W), s (B,)."""
    s = per_sample(s, x0)
    return (1 - s) * x0 + s * eps


def conditional_velocity(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """u = dx_s/ds = eps - x0."""
    return eps - x0


def flow_condition(s: torch.Tensor) -> torch.Tensor:
    """Time condition of the flow (instantaneous velocity) branch: the expanded interval's negative half."""
    return -s


def consistency_condition(s: torch.Tensor) -> torch.Tensor:
    """Time condition of the consistency (average velocity) branch."""
    return s


def guided_pair(
    model: nn.Module, x: torch.Tensor, s: torch.Tensor, text: TextEmbeddings,
    negative_text: TextEmbeddings | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The flow branch's velocities at (x, s) with `text` and without it (the learned null text, or
    `negative_text`), the two halves of classifier-free guidance; one batch of 2B through the model, each half
    (B, C, H, W) in at least float32."""
    if negative_text is None:
        everyone = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        negative_text = TextEmbeddings(text.pooled, text.tokens, text.mask, drop=everyone)
    both = TextEmbeddings.cat([text, negative_text])
    t = flow_condition(s)
    out = model(torch.cat([x, x]), torch.cat([t, t]), **both.model_kwargs(), drop_text=both.drop).sample
    cond, uncond = at_least_float32(out).chunk(2)
    return cond, uncond
