"""Training step time (forward + backward + optimizer step) and peak memory by preset, objective and mask ratio.

Measured side by side in one run: plain flow matching ("fm"), FACM with the finite-difference tangent
("facm-fd"), with the exact JVP tangent ("facm-jvp": a plain forward for G, a no-grad forward-mode pass for
dG/ds) and with the previous exact JVP ("facm-jvp-shared": one torch.func.jvp whose primal carries the
gradients, kept here for comparison), each at mask ratio 0 and 0.5, plus diffusers' DiTTransformer2DModel of the
same width, depth, heads, patch and token count (forward + backward of a squared error) as the ecosystem's
reference. Prints a markdown table; time ratios are to the same preset's "fm, mask 0" row.

Peak memory: on GPU torch.cuda.max_memory_allocated; on CPU each row runs in a fresh process and reports the
growth of its peak resident memory over the process's size after setup (activations, gradients, AdamW state).

    python -m benchmarks.train_step --presets tiny S/2 --batch 64 8 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import resource
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from unittest import mock

import torch
from diffusers import DiTTransformer2DModel

from benchmarks.common import machine, median_seconds, print_table, timed_step
from eidos import Batch, FACMObjective, MaskDiT, ObjectiveConfig, TextEmbeddings
from eidos.objectives import facm
from eidos.objectives.path import at_least_float32

OBJECTIVES = {
    "fm": ObjectiveConfig(consistency_weight=0.0, guidance_scale=1.0),
    "facm-fd": ObjectiveConfig(tangent="finite_difference", consistency_batch_fraction=1.0),
    "facm-jvp": ObjectiveConfig(tangent="jvp", consistency_batch_fraction=1.0),
    "facm-jvp-shared": ObjectiveConfig(tangent="jvp", consistency_batch_fraction=1.0),
}


def shared_graph_jvp(fn, x_s, s, u, tangent="jvp", step=1e-3, precision="autocast"):
    """The previous exact tangent: G and dG/ds from one torch.func.jvp whose primal carries the parameter
    gradients, so the gradient pass runs the explicit attention and autograd keeps the tangents' activations."""
    G, dG = torch.func.jvp(partial(fn, forward_mode=True), (x_s, s), (u, torch.ones_like(s)))
    return G, at_least_float32(dG.detach())


def objective_context(name: str):
    if name == "facm-jvp-shared":
        return mock.patch.object(facm, "velocity_and_time_derivative", shared_graph_jvp)
    return contextlib.nullcontext()


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


def build(name: str, device) -> MaskDiT:
    overrides = {"cross_attention": True} if name == "tiny" else {}
    return MaskDiT.from_preset(name, **overrides).to(device)


def measure_objective(preset: str, batch_size: int, objective_name: str, mask_ratio: float, repeats: int,
                      device, dtype) -> tuple[float, float]:
    """(median seconds, peak MiB) of one FACMObjective training step; (nan, nan) when it runs out of memory."""
    torch.manual_seed(0)
    model = build(preset, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    batch = make_batch(model, batch_size, device)
    # the frozen teacher costs what any forward of this network costs: the model stands in for it
    objective = FACMObjective(OBJECTIVES[objective_name], patch_size=model.config.patch_size,
                              mask_ratio=mask_ratio, teacher=model)

    def step():
        with autocast(device, dtype):
            loss, _ = objective(model, batch, torch.Generator(device=device).manual_seed(0))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    setup_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    with objective_context(objective_name):
        seconds, peak_gib = timed_step(step, device, repeats)
    if device.type == "cuda":
        return seconds, peak_gib * 1024
    return seconds, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - setup_kib) / 1024


def measure_in_fresh_process(*args) -> tuple[float, float]:
    """On CPU a process's peak RSS never goes down, so each row's peak needs a process of its own."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(measure_objective, *args).result()


def bench_preset(name: str, batch_size: int, repeats: int, device, dtype, objectives: list[str]) -> list[list]:
    measure = measure_objective if device.type == "cuda" else measure_in_fresh_process
    rows, base = [], None
    for objective_name in objectives:
        for mask_ratio in (0.0, 0.5):
            seconds, peak = measure(name, batch_size, objective_name, mask_ratio, repeats, device, dtype)
            if math.isnan(seconds):
                rows.append([name, objective_name, mask_ratio, "out of memory", "-", "-", "-"])
                continue
            base = base or seconds
            rows.append([name, objective_name, mask_ratio, f"{seconds * 1000:.0f}", f"{batch_size / seconds:.1f}",
                         f"{seconds / base:.2f}", f"{peak:.0f}"])
    model = build(name, device)
    rows.append(bench_diffusers_dit(model, make_batch(model, batch_size, device), repeats, device, dtype, base))
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
    peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f}" if device.type == "cuda" else "-"
    return [f"{c.width}x{c.depth} diffusers DiT", "mse", 0.0, f"{seconds * 1000:.0f}", f"{size / seconds:.1f}",
            f"{seconds / base if base else math.nan:.2f}", peak]


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
    peak = "peak MiB" if device.type == "cuda" else "peak RSS growth MiB"
    print_table(["preset", "objective", "mask", "step ms", "samples/s", "time / fm mask 0", peak], rows)


if __name__ == "__main__":
    main()
