"""The optimizer a run trains with (`train.optimizer`): AdamW, or Muon for the transformer blocks' weight matrices
with AdamW for every other parameter, as one `torch.optim.Optimizer` (one state dict, one learning rate per
step, so checkpoints, resume and the stage schedule treat both alike).

Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks"): SGD momentum (Nesterov)
whose update matrix is replaced by its nearest semi-orthogonal matrix, computed by five Newton-Schulz iterations
of the quintic a X + b (X X^T) X + c (X X^T)^2 X with (a, b, c) = (3.4445, -4.7750, 2.0315). The update is
scaled by 0.2 sqrt(max(rows, cols)) so its RMS is 0.2, that of a typical AdamW update, and weight decay is
decoupled (Liu et al. 2025, "Muon is Scalable for LLM Training"): the stages' AdamW learning rates serve both.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import nn

from eidos.config import TrainConfig

_NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer `cfg.optimizer` names, at the first stage's learning rate."""
    lr = cfg.stages[0].learning_rate
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay,
                                 fused=device.type == "cuda")
    hidden = set(block_matrices(model))
    return MuonWithAdamW(
        [p for p in model.parameters() if p in hidden], [p for p in model.parameters() if p not in hidden],
        lr=lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay,
    )


def block_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The 2-D weights inside the transformer blocks (attention, MLP, cross-attention, AdaLN maps): the hidden
    layers Muon is for. Embeddings of the input, time and text, and the output layer stay with AdamW."""
    blocks = [*model.encoder_blocks, *model.decoder_blocks]
    return [p for block in blocks for p in block.parameters() if p.ndim == 2]


def orthogonalise(updates: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U V^T of each matrix U S V^T in `updates` (..., m, n), float32 in and out. The iterations
    run in bfloat16, as in Jordan et al.: they only need the singular values near 1, and bf16 matrix products are
    several times faster than float32 ones (2.4x on our CPU; tensor cores on a GPU)."""
    x = updates.bfloat16()
    tall = x.shape[-2] > x.shape[-1]
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + 1e-7)  # singular values <= 1: inside the basin
    a, b, c = _NEWTON_SCHULZ
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).float()


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon for `muon_params` (2-D), AdamW for `adamw_params`; `lr`, `weight_decay` shared (module docstring)."""

    def __init__(self, muon_params, adamw_params, lr: float, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, momentum: float = 0.95, eps: float = 1e-8):
        muon_params, adamw_params = list(muon_params), list(adamw_params)
        if any(p.ndim != 2 for p in muon_params):
            raise ValueError("Muon updates matrices: every parameter of its group must be 2-D")
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, momentum=momentum, eps=eps)
        super().__init__([{"params": muon_params, "muon": True}, {"params": adamw_params, "muon": False}], defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                (self._muon_step if group["muon"] else self._adamw_step)(group, params)
        return loss

    def _muon_step(self, group: dict, params: list[torch.Tensor]) -> None:
        momentum = group["momentum"]
        by_shape: dict[torch.Size, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, dtype=torch.float32)
            buffer = state["momentum_buffer"]
            grad = p.grad.float()
            buffer.lerp_(grad, 1 - momentum)
            by_shape[p.shape].append((p, grad.lerp(buffer, momentum)))  # Nesterov; p.grad itself untouched
        for shape, items in by_shape.items():  # one batched Newton-Schulz per shape
            directions = orthogonalise(torch.stack([update for _, update in items]))
            scale = 0.2 * math.sqrt(max(shape))
            for (p, _), direction in zip(items, directions, strict=True):
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(direction.to(p.dtype), alpha=-group["lr"] * scale)

    def _adamw_step(self, group: dict, params: list[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        for p in params:
            state = self.state[p]
            if "step" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
            state["step"] += 1
            grad = p.grad.float()
            state["exp_avg"].lerp_(grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denominator = (state["exp_avg_sq"] / (1 - beta2 ** state["step"])).sqrt_().add_(group["eps"])
            p.mul_(1 - group["lr"] * group["weight_decay"])
            p.addcdiv_(state["exp_avg"].to(p.dtype), denominator.to(p.dtype),
                       value=-group["lr"] / (1 - beta1 ** state["step"]))
