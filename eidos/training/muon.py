"""torch's Muon with its Newton-Schulz iterations batched over matrices of one shape, in a precision of our choice.

`torch.optim.Muon` orthogonalises one matrix at a time and always in bf16. On a CPU whose bf16 products are slower
than float32 ones (an Intel Xeon without AMX: 0.6x), that made the Muon step 27% of the embedded default's
training step. `BatchedMuon` is the same algorithm (Jordan et al. 2024; torch's group options and its per-matrix
state, `momentum_buffer`, so checkpoints move between the two) with two changes: the iterations run in
`newton_schulz_dtype`, which the trainer sets to the run's own precision, and all matrices of one shape go
through them together as one batch of products (BENCHMARKS.md, "Muon's Newton-Schulz iterations").
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch


def newton_schulz(
    matrices: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype: torch.dtype
) -> torch.Tensor:
    """Approximately orthogonalise each (m, n) matrix of a (K, m, n) batch, in `dtype`: scaled to Frobenius norm
    <= 1, then `steps` quintic iterations X <- a X + (b A + c A^2) X with A = X X^T, on the wide orientation
    (the Gram matrix A is min(m, n) square). With Jordan's coefficients the singular values land near 1, not at
    1 (0.68-1.14 for Gaussian 64 x 192 matrices), which trains as well (Jordan et al. 2024)."""
    a, b, c = coefficients
    x = matrices.to(dtype)
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp_min(eps)
    for _ in range(steps):
        gram = x @ x.mT
        polynomial = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, polynomial, x, beta=a)
    return x.mT if tall else x


def learning_rate_scale(rule: str | None, shape: torch.Size) -> float:
    """The factor on the learning rate of an (A, B) matrix: "match_rms_adamw" 0.2 sqrt(max(A, B)), so the update's
    RMS is 0.2, an AdamW update's (Liu et al. 2025); "original" (or None) sqrt(max(1, A / B)) (Jordan et al. 2024)."""
    rows, cols = shape[:2]
    if rule == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if rule in (None, "original"):
        return math.sqrt(max(1.0, rows / cols))
    raise ValueError(f"adjust_lr_fn must be 'original' or 'match_rms_adamw', got {rule!r}")


def closure_loss(closure) -> torch.Tensor | None:
    """The loss of an optimizer step's closure, evaluated with gradients on (torch's convention), or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class BatchedMuon(torch.optim.Muon):
    """`torch.optim.Muon` (same arguments, group options and state) whose Newton-Schulz iterations run in
    `newton_schulz_dtype` (torch's bf16 unless set) over all matrices of one shape at once."""

    def __init__(self, params, *, newton_schulz_dtype: torch.dtype = torch.bfloat16, **options):
        super().__init__(params, **options)
        self.newton_schulz_dtype = newton_schulz_dtype

    def __getstate__(self) -> dict:  # torch's keeps only defaults, state and groups (copies and pickles)
        return {**super().__getstate__(), "newton_schulz_dtype": self.newton_schulz_dtype}

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        momentum = group["momentum"]
        by_shape: dict[torch.Size, list[tuple[torch.nn.Parameter, torch.Tensor]]] = defaultdict(list)
        for param in params:
            grad, state = param.grad, self.state[param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
            buffer = state["momentum_buffer"]
            buffer.lerp_(grad, 1 - momentum)
            by_shape[param.shape].append((param, grad.lerp(buffer, momentum) if group["nesterov"] else buffer))
        lr, decay = float(group["lr"]), group["weight_decay"]
        for shape, pairs in by_shape.items():
            updates = newton_schulz(torch.stack([update for _, update in pairs]), group["ns_coefficients"],
                                    group["ns_steps"], group["eps"], self.newton_schulz_dtype)
            scaled_lr = lr * learning_rate_scale(group["adjust_lr_fn"], shape)
            for (param, _), update in zip(pairs, updates, strict=True):
                param.mul_(1 - lr * decay)
                param.add_(update, alpha=-scaled_lr)
