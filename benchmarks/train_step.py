"""Training step time (forward + backward + optimizer step) by preset, objective and mask ratio.

Measured side by side in one process: plain flow matching ("fm"), FACM with the exact JVP tangent
("facm-jvp") and with the finite-difference tangent ("facm-fd"), each at mask ratio 0 and 0.5, plus
diffusers' DiTTransformer2DModel of the same width, depth, heads, patch and token count (forward + backward of
a squared error, no optimizer difference) as the ecosystem's reference. Prints a markdown table; ratios are to
the same preset's "fm, mask 0" row.

    python benchmarks/train_step.py --presets tiny S/2 --batch 64 8 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import math

import torch
from diffusers import DiTTransformer2DModel

from benchmarks.common import machine, median_seconds, peak_memory_mib, print_table, timed_step
from eidos import Batch, FACMObjective, MaskDiT, ObjectiveConfig, TextEmbeddings

OBJECTIVES = {
    "fm": ObjectiveConfig(consistency_weight=0.0, guidance_scale=1.0),
    "facm-jvp": ObjectiveConfig(tangent="jvp", consistency_batch_fraction=1.0),
    "facm-fd": ObjectiveConfig(tangent="finite_difference", consistency_batch_fraction=1.0),
}


def make_batch(model: MaskDiT, batch: int, device) -> Batch:
    c = model.config
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, c.in_channels, c.sample_size, c.sample_size, generator=generator)
    text = TextEmbeddings(torch.randn(batch, c.text_dim, generator=generator),
                          torch.randn(batch, 16, c.text_dim, generator=generator),
                          torch.ones(batch, 16, dtype=torch.bool))
    return Batch(latents, text).to(device)


def autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def bench_preset(name: str, batch_size: int, repeats: int, device, dtype, objectives: list[str]) -> list[list]:
    overrides = {"cross_attention": True} if name == "tiny" else {}
    model = MaskDiT.from_preset(name, **overrides).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    batch = make_batch(model, batch_size, device)
    rows, base = [], None
    for objective_name in objectives:
        for mask_ratio in (0.0, 0.5):
            # the frozen teacher costs what any forward of this network costs: the model stands in for it
            objective = FACMObjective(OBJECTIVES[objective_name], mask_ratio=mask_ratio, teacher=model)

            def step(objective=objective):
                with autocast(device, dtype):
                    loss, _ = objective(model, batch, torch.Generator(device=device).manual_seed(0))
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            seconds, peak = timed_step(step, device, repeats)
            if math.isnan(seconds):
                optimizer.zero_grad(set_to_none=True)
                rows.append([name, objective_name, mask_ratio, "out of memory", "-", "-", "-"])
                continue
            base = base or seconds
            rows.append([name, objective_name, mask_ratio, f"{seconds * 1000:.0f}", f"{batch_size / seconds:.1f}",
                         f"{seconds / base:.2f}", peak_memory_mib(device)])
    rows.append(bench_diffusers_dit(model, batch, repeats, device, dtype, base))
    return rows


def bench_diffusers_dit(model: MaskDiT, batch: Batch, repeats: int, device, dtype, base: float) -> list:
    c = model.config
    dit = DiTTransformer2DModel(
        num_attention_heads=c.heads, attention_head_dim=c.width // c.heads, in_channels=c.in_channels,
        out_channels=c.in_channels, num_layers=c.depth, sample_size=c.sample_size, patch_size=c.patch_size,
        num_embeds_ada_norm=1000,
    ).to(device)
    optimizer = torch.optim.AdamW(dit.parameters(), lr=1e-4, fused=device.type == "cuda")
    labels = torch.zeros(batch.latents.shape[0], dtype=torch.long, device=device)
    timesteps = torch.full_like(labels, 500)

    def step():
        with autocast(device, dtype):
            out = dit(batch.latents, timestep=timesteps, class_labels=labels).sample
        out.float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = median_seconds(step, device, repeats)
    size = batch.latents.shape[0]
    return [f"{c.width}x{c.depth} diffusers DiT", "mse", 0.0, f"{seconds * 1000:.0f}", f"{size / seconds:.1f}",
            f"{seconds / base:.2f}", peak_memory_mib(device)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "S/2"])
    parser.add_argument("--batch", nargs="+", type=int, default=[64, 8], help="batch size per preset")
    parser.add_argument("--objectives", nargs="+", choices=list(OBJECTIVES), default=list(OBJECTIVES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="autocast dtype")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    print(f"machine: {machine()}; torch {torch.__version__}; autocast {args.dtype}; median of {args.repeats}\n")
    rows = []
    for preset, batch in zip(args.presets, args.batch, strict=True):
        rows += bench_preset(preset, batch, args.repeats, device, dtype, args.objectives)
    print_table(["preset", "objective", "mask", "step ms", "samples/s", "time / fm mask 0", "peak MiB"], rows)


if __name__ == "__main__":
    main()
