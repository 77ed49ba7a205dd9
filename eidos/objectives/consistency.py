"""Flow-anchored consistency (FACM, Peng et al. 2025) on the linear path.

The consistency branch predicts the average velocity G(x_s, s) from s down to 0, so x0_hat = x_s - s G.
Differentiating x0_hat along the trajectory gives the identity G = u - s dG/ds, with the total derivative
dG/ds = (dG/dx) u + dG/dt. We get dG/ds from one forward-mode JVP with tangents (u, 1), or from a central
finite difference, and regress G onto a clipped step towards the identity (DESIGN §3).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from eidos.model.layers import patchify
from eidos.objectives.flow_matching import token_mean
from eidos.objectives.path import per_sample

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(x (B, C, H, W), t (B,)) -> G (B, C, H, W): the network with everything else fixed (text, mask)."""


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Upcast bf16/fp16 to float32; keep float64 (tests check identities in double precision)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def velocity_and_time_derivative(
    fn: VelocityFn,
    x_s: torch.Tensor,
    s: torch.Tensor,
    u: torch.Tensor,
    tangent: str = "jvp",
    step: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """G = fn(x_s, s) (differentiable w.r.t. the parameters) and sg(dG/ds) along dx/ds = u, dt/ds = 1.

    tangent="jvp" uses torch.func.jvp; the primal output of a JVP carries parameter gradients equal to a
    plain forward's. tangent="finite_difference" uses (fn(x + h u, s + h) - fn(x - h u, s - h)) / 2h from two
    no-grad forwards in float32 (autocast off: a difference of bf16 outputs would be mostly rounding noise).
    """
    if tangent == "jvp":
        G, dG = torch.func.jvp(fn, (x_s, s), (u, torch.ones_like(s)))
        return G, at_least_float32(dG.detach())
    if tangent != "finite_difference":
        raise ValueError(f"tangent must be 'jvp' or 'finite_difference', got {tangent!r}")
    G = fn(x_s, s)
    with torch.no_grad(), torch.autocast(device_type=x_s.device.type, enabled=False):
        forward = at_least_float32(fn(x_s + step * u, s + step))
        backward = at_least_float32(fn(x_s - step * u, s - step))
    return G, (forward - backward) / (2 * step)


def consistency_target(G: torch.Tensor, dG: torch.Tensor, u: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """target = sg(G) - alpha(s) clip(sg(G) - (u - s sg(dG)), -1, 1), alpha(s) = 1 - sqrt(1 - s)."""
    G = at_least_float32(G.detach())
    s_ = per_sample(s.to(G.dtype), G)
    residual = G - (u.to(G.dtype) - s_ * dG)  # zero exactly when G satisfies the consistency identity
    alpha = 1 - torch.sqrt((1 - s_).clamp_min(0))
    return G - alpha * residual.clamp(-1, 1)


def consistency_weight(s: torch.Tensor) -> torch.Tensor:
    """beta(s) = sin(pi s / 2): little weight near the data end, where the flow anchor already pins G."""
    return torch.sin(math.pi * s / 2)


def adaptive_consistency_loss(
    G: torch.Tensor, target: torch.Tensor, visible: torch.Tensor, patch_size: int, eps: float = 1e-3
) -> torch.Tensor:
    """Per sample e = mean over visible tokens of (G - target)^2, returned as e / sg(sqrt(e + eps)). (B,)"""
    squared = (patchify(G.float(), patch_size) - patchify(target, patch_size)).pow(2).mean(dim=-1)  # (B, N)
    e = token_mean(squared, visible)
    return e / (e.detach() + eps).sqrt()
