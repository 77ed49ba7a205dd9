"""How exact is the consistency target's tangent dG/ds under each precision? Against a float64 JVP reference.

For each preset, a network with perturbed weights (zero-initialised gates would hide most of it) and a batch of
random latents, text and a 0.5 token mask; times s spread over (0, 1) and a random tangent direction u. Each
row runs as a bf16-autocast training step does (float32 weights; G from a bf16 forward):
  jvp, autocast (bf16)  the exact tangent's no-grad forward-mode pass in bf16 (objective.tangent_precision=autocast)
  jvp, float32          the same pass with autocast off (objective.tangent_precision=float32)
  finite difference     objective.tangent=finite_difference: two float32 forwards, step finite_difference_step
For each: the relative error of dG/ds, of the FACM target built from the exact G and this dG/ds (the tangent
enters the target as s * dG/ds inside a clipped, alpha(s)-scaled residual: this is the error the tangent adds
to what training regresses onto), of G itself from the same pass (bf16 training has this error anyway), and
the median time of G plus dG/ds.

    python -m benchmarks.tangent_precision --presets tiny S/2 --batch 16 8
"""

from __future__ import annotations

import argparse
from functools import partial

import torch

from benchmarks.common import machine, median_seconds, print_table
from benchmarks.train_step import make_batch
from eidos import MaskDiT, ObjectiveConfig
from eidos.model import TokenMask
from eidos.objectives.consistency import consistency_target, velocity_and_time_derivative


def perturbed(preset: str, seed: int = 0) -> MaskDiT:
    overrides = {"cross_attention": True} if preset == "tiny" else {}
    torch.manual_seed(seed)
    model = MaskDiT.from_preset(preset, **overrides)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return model.eval()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def study(preset: str, batch_size: int, repeats: int, step: float) -> list[list]:
    model = perturbed(preset)
    batch = make_batch(model, batch_size, torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    mask = TokenMask.random(batch_size, model.num_tokens, 0.5, generator)
    s = torch.linspace(0.05, 0.95, batch_size)
    x = batch.latents
    u = torch.randn(x.shape, generator=generator)

    def fn_for(net, dtype):
        text = {k: (v.to(dtype) if v is not None and v.is_floating_point() else v)
                for k, v in batch.text.model_kwargs().items()}

        def fn(x_in, t, forward_mode=False):
            return net(x_in, t, **text, token_mask=mask, math_attention=forward_mode).sample
        return fn

    reference_model = perturbed(preset).double()
    ref_fn = fn_for(reference_model, torch.float64)
    with torch.no_grad():
        G_ref, dG_ref = torch.func.jvp(partial(ref_fn, forward_mode=True), (x.double(), s.double()),
                                       (u.double(), torch.ones_like(s.double())))
    target_ref = consistency_target(G_ref, dG_ref, u.double(), s.double())

    fn = fn_for(model, torch.float32)
    variants = {  # name: (tangent, objective.tangent_precision) in a bf16-autocast training step
        "jvp, autocast (bf16)": ("jvp", "autocast"),
        "jvp, float32": ("jvp", "float32"),
        "finite difference": ("finite_difference", "autocast"),
    }
    rows = []
    for name, (tangent, precision) in variants.items():
        def run(tangent=tangent, precision=precision):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                return velocity_and_time_derivative(fn, x, s, u, tangent, step, precision)
        G, dG = run()
        target = consistency_target(G_ref, dG, u.double(), s.double())
        seconds = median_seconds(run, torch.device("cpu"), repeats, warmup=1)
        rows.append([preset, name, f"{relative_error(dG, dG_ref):.1e}", f"{relative_error(target, target_ref):.1e}",
                     f"{relative_error(G, G_ref):.1e}", f"{seconds * 1000:.0f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "S/2"])
    parser.add_argument("--batch", nargs="+", type=int, default=[16, 8], help="batch size per preset")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    step = ObjectiveConfig().finite_difference_step
    print(f"machine: {machine()}; torch {torch.__version__}; median of {args.repeats}; fd step {step}\n")
    rows = []
    for preset, batch in zip(args.presets, args.batch, strict=True):
        rows += study(preset, batch, args.repeats, step)
    print_table(["preset", "tangent", "dG/ds rel. error", "target rel. error", "G rel. error", "G + dG/ds ms"],
                rows)


if __name__ == "__main__":
    main()
