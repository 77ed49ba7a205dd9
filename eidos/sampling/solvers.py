"""Samplers: plain functions of a velocity model and starting noise, shared by the CLI, the training-time
sample grids and the pipeline. Time convention of `eidos.objectives.path`: s = 1 noise, s = 0 data.
"""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from eidos.batch import TextEmbeddings
from eidos.objectives.path import at_least_float32, consistency_condition, flow_condition, guided_pair


def consistency_times(num_steps: int) -> list[float]:
    """s_k for an N-step consistency sampler: 1, 1 - 1/N, ..., 1/N."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return [1 - k / num_steps for k in range(num_steps)]


def check_sigmas(sigmas) -> list[float]:
    """A user's grid of noise levels (diffusers' `sigmas`) as floats: strictly decreasing, in (0, 1]."""
    values = [float(s) for s in sigmas]
    decreasing = all(a > b for a, b in zip(values, values[1:], strict=False))
    if not values or not decreasing or not all(0 < s <= 1 for s in values):
        raise ValueError(f"sigmas must be strictly decreasing noise levels in (0, 1] (s = 1 is pure noise), "
                         f"e.g. [1.0, 0.5]; got {list(sigmas)}")
    return values


def _full(value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.full((like.shape[0],), value, device=like.device, dtype=at_least_float32(like).dtype)


@torch.no_grad()
def sample_consistency(
    model: nn.Module,
    noise: torch.Tensor,
    text: TextEmbeddings,
    num_steps: int = 1,
    times: list[float] | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023) with the average-velocity parametrisation.

    At each s_k: x0_hat = x - s_k G(x, s_k); then re-noise to the next time, x = (1 - s_{k+1}) x0_hat +
    s_{k+1} eps'. One step is x0_hat = eps - G(eps, 1). noise (B, C, H, W) -> x0_hat (B, C, H, W).
    `generator` draws the re-noising; a list of B generators makes each sample reproducible on its own.
    """
    times = consistency_times(num_steps) if times is None else list(times)
    x = noise
    for k, s in enumerate(times):
        t = consistency_condition(_full(s, x))
        velocity = at_least_float32(model(x, t, **text.model_kwargs(), drop_text=text.drop).sample)
        x0_hat = at_least_float32(x) - s * velocity
        if k + 1 < len(times):
            s_next = times[k + 1]
            fresh = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x0_hat.dtype)
            x = (1 - s_next) * x0_hat + s_next * fresh
    return x0_hat


def flow_velocity(
    model: nn.Module,
    x: torch.Tensor,
    s: float,
    text: TextEmbeddings,
    guidance_scale: float = 1.0,
    negative_text: TextEmbeddings | None = None,
) -> torch.Tensor:
    """Instantaneous velocity at time s, with classifier-free guidance when guidance_scale != 1.

    The unconditional branch is the learned null text, or `negative_text` if given; both branches go through
    the model as one batch of 2B.
    """
    if guidance_scale == 1:
        t = flow_condition(_full(s, x))
        return at_least_float32(model(x, t, **text.model_kwargs(), drop_text=text.drop).sample)
    cond, uncond = guided_pair(model, x, _full(s, x), text, negative_text)
    return uncond + guidance_scale * (cond - uncond)


def network_evaluations(sampler: str, steps: int, guidance_scale: float = 1.0) -> int:
    """Forwards of the network per image: one per step, two per flow step with classifier-free guidance (the
    conditional and the unconditional velocity, `flow_velocity`); the consistency sampler takes no guidance."""
    return steps * (2 if sampler == "flow" and guidance_scale != 1 else 1)


def flow_times(num_steps: int) -> list[float]:
    """The uniform grid of an N-step flow sampler: 1, 1 - 1/N, ..., 1/N, 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return [1 - k / num_steps for k in range(num_steps)] + [0.0]


@torch.no_grad()
def sample_flow_euler(
    model: nn.Module,
    noise: torch.Tensor,
    text: TextEmbeddings,
    num_steps: int = 30,
    guidance_scale: float = 1.0,
    negative_text: TextEmbeddings | None = None,
    times: list[float] | None = None,
    progress=iter,
) -> torch.Tensor:
    """Euler integration of dx/ds = G(x, -s) from s = 1 to s = 0 (the flow branch), the step of diffusers'
    FlowMatchEulerDiscreteScheduler. `times`: the grid, num_steps + 1 values from 1 down to 0 (default uniform;
    `EidosPipeline` passes its scheduler's). noise (B, C, H, W) -> x0 (B, C, H, W).
    """
    grid = flow_times(num_steps) if times is None else list(times)
    x = at_least_float32(noise)
    for s, s_next in progress(list(zip(grid[:-1], grid[1:], strict=True))):
        x = x + (s_next - s) * flow_velocity(model, x, s, text, guidance_scale, negative_text)
    return x
