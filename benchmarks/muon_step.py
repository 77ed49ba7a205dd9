"""One Muon step over a preset's block matrices: torch's Muon (one matrix at a time, Newton-Schulz in bf16) against
`BatchedMuon` (matrices of one shape batched) with the iterations in bf16 and in float32.

Each round times one step of every variant back to back, in a rotating order (a shared machine's load drifts; a
round sees the same load); the table gives each variant's median and the median of its per-round ratio to torch's
Muon, and how far one orthogonalisation lands from the same iteration in float64 (relative Frobenius error, the
largest over the matrices). The gradients are random: Muon's cost does not depend on their values.

    python -m benchmarks.muon_step --presets tiny S/2 --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from benchmarks.common import machine, print_table, synchronize
from eidos import MaskDiT
from eidos.training.muon import BatchedMuon, newton_schulz
from eidos.training.optimizer import block_matrices

OPTIONS = {"lr": 2e-3, "weight_decay": 0.0, "momentum": 0.95, "adjust_lr_fn": "match_rms_adamw"}
VARIANTS = {
    "torch.optim.Muon (bf16, one by one)": lambda params: torch.optim.Muon(params, **OPTIONS),
    "BatchedMuon, bf16": lambda params: BatchedMuon(params, newton_schulz_dtype=torch.bfloat16, **OPTIONS),
    "BatchedMuon, float32": lambda params: BatchedMuon(params, newton_schulz_dtype=torch.float32, **OPTIONS),
}


def matrices_of(preset: str, device: torch.device) -> list[nn.Parameter]:
    overrides = {"cross_attention": True} if preset == "tiny" else {}  # as the embedded default
    model = MaskDiT.from_preset(preset, **overrides)
    generator = torch.Generator().manual_seed(0)
    params = [nn.Parameter(p.detach().to(device)) for p in block_matrices(model)]
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator).to(device)
    return params


def worst_error(params: list[nn.Parameter], group: dict, dtype: torch.dtype) -> float:
    """Largest relative error of one orthogonalisation in `dtype` against float64, over the matrices, with the
    iteration settings of the optimizer group `group`."""
    settings = group["ns_coefficients"], group["ns_steps"], group["eps"]
    errors = []
    for param in params:
        grad = param.grad[None]
        exact = newton_schulz(grad.double(), *settings, torch.float64)
        approx = newton_schulz(grad, *settings, dtype).double()
        errors.append(((approx - exact).norm() / exact.norm()).item())
    return max(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"machine: {machine()}; torch {torch.__version__}")
    rows = []
    for preset in args.presets:
        params = matrices_of(preset, device)
        optimizers = {name: make([nn.Parameter(p.detach().clone()) for p in params]) for name, make in VARIANTS.items()}
        for optimizer in optimizers.values():  # gradients of the same values, then one warm-up step
            for own, source in zip(optimizer.param_groups[0]["params"], params, strict=True):
                own.grad = source.grad.clone()
            optimizer.step()
        seconds: dict[str, list[float]] = {name: [] for name in optimizers}
        names = list(optimizers)
        for round_index in range(args.rounds):
            for name in names[round_index % len(names):] + names[:round_index % len(names)]:
                synchronize(device)
                start = time.perf_counter()
                optimizers[name].step()
                synchronize(device)
                seconds[name].append(time.perf_counter() - start)
        reference = seconds[names[0]]
        shapes = len({tuple(p.shape) for p in params})
        for name in names:
            ratio = statistics.median(s / r for s, r in zip(seconds[name], reference, strict=True))
            dtype = torch.float32 if "float32" in name else torch.bfloat16
            rows.append([preset, f"{len(params)} ({shapes} shapes)", name,
                         f"{1000 * statistics.median(seconds[name]):.1f}", f"{ratio:.2f}",
                         f"{worst_error(params, optimizers[name].param_groups[0], dtype):.1e}"])
    print_table(["preset", "matrices", "optimizer", "step ms (median)", "/ torch's", "NS error vs float64"],
                rows)


if __name__ == "__main__":
    main()
