"""Flow-anchored consistency (FACM, Peng et al. 2025) on the linear path.

The consistency branch predicts the average velocity G(x_s, s) from s down to 0, so x0_hat = x_s - s G.
Differentiating x0_hat along the trajectory gives the identity G = u - s dG/ds, with the total derivative
dG/ds = (dG/dx) u + dG/dt. We get dG/ds from a forward-mode JVP with tangents (u, 1), or from a central
finite difference, and regress G onto a clipped step towards the identity (DESIGN §3).

The target stops gradients at dG/ds, so its pass never shares a graph with G: G comes from an ordinary forward
(fused attention, activations saved as for flow matching) and dG/ds from a separate pass under no_grad that
saves nothing for backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial

import torch

from eidos.model.layers import patchify
from eidos.objectives.path import at_least_float32, per_sample
from eidos.objectives.tokens import token_mean

VelocityFn = Callable[..., torch.Tensor]
"""(x (B, C, H, W), t (B,), forward_mode=False) -> G (B, C, H, W): the network with everything else fixed (text,
mask). forward_mode=True asks for a forward that torch.func.jvp can differentiate (explicit softmax attention:
the fused SDPA kernels have no forward-mode rule)."""


def velocity_and_time_derivative(
    fn: VelocityFn,
    x_s: torch.Tensor,
    s: torch.Tensor,
    u: torch.Tensor,
    tangent: str = "jvp",
    step: float = 1e-3,
    precision: str = "autocast",
) -> tuple[torch.Tensor, torch.Tensor]:
    """G = fn(x_s, s) (differentiable w.r.t. the parameters) and sg(dG/ds) along dx/ds = u, dt/ds = 1.

    G is one ordinary forward. tangent="jvp": dG/ds from torch.func.jvp of the forward-mode network in a second
    pass under no_grad, exact to float rounding, in the autocast dtype (precision="autocast") or in float32
    (precision="float32"). tangent="finite_difference": (fn(x + h u, s + h) - fn(x - h u, s - h)) / 2h from two
    no-grad forwards in float32 (autocast off: a difference of bf16 outputs would be mostly rounding noise).
    """
    if tangent not in ("jvp", "finite_difference"):
        raise ValueError(f"tangent must be 'jvp' or 'finite_difference', got {tangent!r}")
    G = fn(x_s, s)
    device = x_s.device.type
    with torch.no_grad():
        if tangent == "jvp":
            with torch.autocast(device_type=device, enabled=False) if precision == "float32" else nullcontext():
                _, dG = torch.func.jvp(partial(fn, forward_mode=True), (x_s, s), (u, torch.ones_like(s)))
            return G, at_least_float32(dG)
        with torch.autocast(device_type=device, enabled=False):
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
