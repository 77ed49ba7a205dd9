"""Exponential moving average of the weights, with a warm-up for short runs.

With warm-up the decay at step k is min(decay, (1 + k) / (10 + k)), so the average forgets the random init
quickly (DESIGN §1: a fixed 0.999 still lags after 2,000 steps).
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.shadow = {name: p.detach().float().clone() for name, p in model.named_parameters()}

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        weight = 1 - self.decay_at(step)
        names = list(self.shadow)
        params = dict(model.named_parameters())
        torch._foreach_lerp_([self.shadow[n] for n in names], [params[n].detach().float() for n in names], weight)

    @torch.no_grad()
    def restart(self, model: nn.Module) -> None:
        """Start the average again from the model's current weights (pass steps counted from now to update)."""
        params = dict(model.named_parameters())
        for name, shadow in self.shadow.items():
            shadow.copy_(params[name].detach().float())

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            p.copy_(self.shadow[name].to(p.dtype))

    def to(self, device: torch.device | str) -> EMA:
        """Keep the average on `device` (the training device: updates then need no copies)."""
        self.shadow = {name: t.to(device) for name, t in self.shadow.items()}
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: t.contiguous() for name, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state.keys() != self.shadow.keys():
            missing, extra = self.shadow.keys() - state.keys(), state.keys() - self.shadow.keys()
            raise ValueError(f"EMA state does not match the model: missing {sorted(missing)}, extra {sorted(extra)}")
        for name, t in state.items():
            self.shadow[name].copy_(t)
