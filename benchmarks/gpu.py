"""The GPU benchmark: one script, sized to finish in under 8 minutes on one H100/H200.

Sections, each printed as a markdown table as soon as it is measured (and appended to --out as JSON lines):
  ceilings   bf16 matmul TFLOP/s and device-to-device copy GB/s, measured here (the MFU denominators)
  tangent    XL/2 training step by objective: FM, FACM with the finite-difference tangent, the exact JVP tangent
             (no-grad forward-mode pass) and the previous shared-graph JVP, at batch 16/64/128, mask 0 and 0.5
  train      XL/2 FM training step (forward + backward + fused AdamW) in bf16 autocast with SDPA attention,
             mask 0.5 vs 0: samples/s, model TFLOP/s, MFU, peak memory
  sampling   1/2/4-step consistency and flow + CFG at batch 64, SDXL-architecture VAE decode timed apart
  encode     SDXL-architecture VAE encoder (images/s at the resolution) and CLIP-L text encoder (captions/s)
  compile    the train section again with each transformer block torch.compile'd (regional compilation)

FACM's overhead over FM and the comparison with diffusers' DiT come from benchmarks/train_step.py.
Model FLOPs are counted, not estimated: torch's FlopCounterMode over one training step with explicit-matmul
attention (so attention's two matmuls are counted too), divided by the batch; "6 x params x tokens" is printed
beside it as the usual estimate. Weights are random: throughput does not depend on their values.

    python -m benchmarks.gpu --out gpu.jsonl                      # the real run (CUDA)
    python -m benchmarks.gpu --preset S/2 --batch 4 --sample-batch 2 --small-encoders --repeats 2   # CPU dry run
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from diffusers import AutoencoderKL
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig, CLIPTextModel

from benchmarks.common import machine, median_seconds, print_table, timed_step
from benchmarks.sampling import SAMPLING_HEADER, measure_sampling
from benchmarks.train_step import OBJECTIVES, make_batch, measure_objective
from eidos import FACMObjective, MaskDiT
from eidos.encoders import encode_moments

SECTIONS = ("ceilings", "tangent", "train", "sampling", "encode", "compile")
DATASHEET_BF16_TFLOPS = 989.0  # H100/H200 SXM dense bf16, vendor datasheet

# The SDXL VAE's architecture (stabilityai/sdxl-vae config.json) and CLIP ViT-L/14's text tower, random weights.
SDXL_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    scaling_factor=0.13025, sample_size=1024,
)
CLIP_L_TEXT_CONFIG = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                          max_position_embeddings=77, vocab_size=49408, projection_dim=768)
SMALL_VAE_CONFIG = {**SDXL_VAE_CONFIG, "block_out_channels": (8, 16, 16, 16), "norm_num_groups": 8}
SMALL_CLIP_CONFIG = {**CLIP_L_TEXT_CONFIG, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 2}


class Report:
    """Prints each section's table and appends its rows to a JSON-lines file."""

    def __init__(self, path: str | None):
        self.path = path

    def section(self, name: str, header: list[str], rows: list[list]) -> None:
        print(f"\n## {name}\n", flush=True)
        print_table(header, rows)
        if self.path:
            with open(self.path, "a") as f:
                for row in rows:
                    f.write(json.dumps({"section": name, **dict(zip(header, row, strict=True))}) + "\n")


def bf16_autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


def measure_ceilings(device: torch.device, repeats: int) -> tuple[float, list[list]]:
    n = 8192 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    seconds = median_seconds(lambda: a @ b, device, repeats * 3)
    matmul_tflops = 2 * n**3 / seconds / 1e12
    src = torch.randn(2**28 if device.type == "cuda" else 2**24, device=device)
    dst = torch.empty_like(src)
    copy_seconds = median_seconds(lambda: dst.copy_(src), device, repeats * 3)
    copy_gbs = 2 * src.numel() * 4 / copy_seconds / 1e9
    return matmul_tflops, [[f"bf16 matmul {n}^3", f"{matmul_tflops:.0f} TFLOP/s"],
                           [f"copy {src.numel() * 4 / 2**20:.0f} MiB (read + write)", f"{copy_gbs:.0f} GB/s"]]


def counted_flops_per_sample(model: MaskDiT, objective: FACMObjective, batch_size: int, device) -> float:
    """Model FLOPs of one training step (forward + backward) per sample, counted by FlopCounterMode with
    explicit-matmul attention so attention is included."""
    batch = make_batch(model, batch_size, device)
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel([SDPBackend.MATH]), bf16_autocast(device):
        loss, _ = objective(model, batch, torch.Generator(device=device).manual_seed(0))
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch_size


def estimated_flops_per_sample(model: MaskDiT, mask_ratio: float) -> float:
    """The usual 6 x params x tokens, with encoder parameters seeing only the kept tokens."""
    tokens = model.num_tokens
    kept = round(tokens * (1 - mask_ratio))
    encoder = sum(p.numel() for p in model.encoder_blocks.parameters())
    rest = sum(p.numel() for p in model.parameters()) - encoder
    return 6 * (encoder * kept + rest * tokens)


def make_step(model, objective, batch, optimizer, device):
    def step():
        with bf16_autocast(device):
            loss, _ = objective(model, batch, torch.Generator(device=device).manual_seed(0))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


MASK_RATIOS = (0.0, 0.5)
TANGENT_OBJECTIVES = ("fm", "facm-fd", "facm-jvp", "facm-jvp-shared")


def bench_tangent(args, device, report: Report) -> None:
    """Each row builds its own network (cross-attention off, as in benchmarks/train_step.py), so its peak memory
    is its own; a row that runs out of memory says so."""
    rows = []
    for batch_size in args.tangent_batches:
        base = None
        for name in TANGENT_OBJECTIVES:
            for mask_ratio in MASK_RATIOS:
                seconds, peak_mib = measure_objective(args.preset, batch_size, name, mask_ratio,
                                                      min(args.repeats, 5), device, torch.bfloat16)
                if seconds != seconds:  # nan: out of memory
                    rows.append([args.preset, batch_size, name, mask_ratio, "out of memory", "-", "-", "-"])
                    continue
                base = base or seconds
                rows.append([args.preset, batch_size, name, mask_ratio, f"{seconds * 1000:.0f}",
                             f"{batch_size / seconds:.0f}", f"{seconds / base:.2f}", f"{peak_mib / 1024:.1f}"])
                print(f"  tangent {name} batch {batch_size} mask {mask_ratio}: {seconds * 1000:.0f} ms", flush=True)
    report.section("tangent", ["preset", "batch", "objective", "mask", "step ms", "samples/s", "time / fm mask 0",
                               "peak GiB"], rows)


def bench_train(model, args, device, flops_per_sample: dict[float, float], peak_tflops: float | None, report: Report,
                mode: str = "eager") -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    batch = make_batch(model, args.batch, device)
    rows, base = [], None
    for mask_ratio in MASK_RATIOS:
        objective = FACMObjective(OBJECTIVES["fm"], patch_size=model.config.patch_size, mask_ratio=mask_ratio)
        flops = flops_per_sample[mask_ratio]
        start = time.perf_counter()
        seconds, peak = timed_step(make_step(model, objective, batch, optimizer, device), device, args.repeats)
        samples_per_s = args.batch / seconds
        tflops = flops * samples_per_s / 1e12
        base = base or seconds
        rows.append([args.preset, mode, mask_ratio, args.batch, f"{seconds * 1000:.0f}", f"{samples_per_s:.0f}",
                     f"{seconds / base:.2f}", f"{flops / 1e9:.0f}",
                     f"{estimated_flops_per_sample(model, mask_ratio) / 1e9:.0f}", f"{tflops:.0f}",
                     f"{100 * tflops / peak_tflops:.1f}" if peak_tflops else "-",
                     f"{100 * tflops / DATASHEET_BF16_TFLOPS:.1f}",
                     f"{peak:.1f}", f"{time.perf_counter() - start:.0f}"])
        print(f"  train {mode} mask {mask_ratio}: {seconds * 1000:.0f} ms/step", flush=True)
    report.section(f"train (FM step, bf16 autocast, SDPA, {mode})", [
        "preset", "mode", "mask", "batch", "step ms", "samples/s", "time / mask 0", "counted GFLOP/sample",
        "6NT GFLOP/sample", "model TFLOP/s", "MFU % of measured matmul", "MFU % of datasheet", "peak GiB",
        "wall s incl. warm-up"], rows)


def bench_sampling(model, vae, args, device, report: Report) -> None:
    model.eval()
    rows = measure_sampling(model, vae, args.sample_batch, args.flow_steps, args.repeats, device, text_tokens=77)
    model.train()
    report.section(f"sampling ({args.preset}, bf16, VAE decode at {model.config.sample_size * 8}px)", SAMPLING_HEADER,
                   rows)


def bench_encode(vae, text_encoder, args, device, report: Report) -> None:
    rows = []
    images = torch.rand(args.encode_batch, 3, args.resolution, args.resolution, device=device)
    ids = torch.randint(0, text_encoder.config.vocab_size, (args.text_batch, 77), device=device)
    with torch.no_grad(), bf16_autocast(device):
        seconds = median_seconds(lambda: encode_moments(vae, images), device, args.repeats)
        rows.append(["VAE encoder (SDXL architecture)", f"{args.resolution}px", args.encode_batch,
                     f"{seconds * 1000:.1f}", f"{args.encode_batch / seconds:.0f}"])
        seconds = median_seconds(lambda: text_encoder(input_ids=ids), device, args.repeats)
        rows.append(["CLIP-L text encoder", "77 tokens", args.text_batch, f"{seconds * 1000:.1f}",
                     f"{args.text_batch / seconds:.0f}"])
    report.section("encode (bf16 autocast, model compute only)", ["model", "input", "batch", "ms", "items/s"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="XL/2")
    parser.add_argument("--batch", type=int, default=128, help="training batch (train section)")
    parser.add_argument("--sample-batch", type=int, default=64)
    parser.add_argument("--encode-batch", type=int, default=64)
    parser.add_argument("--text-batch", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--flow-steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--small-encoders", action="store_true", help="tiny VAE/CLIP configs (CPU dry run)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS,
                        help="compile: the train section again with every transformer block torch.compile'd")
    parser.add_argument("--tangent-batches", nargs="+", type=int, default=[16, 64, 128],
                        help="batch sizes of the tangent section")
    parser.add_argument("--out", help="append every row as JSON lines here")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    report = Report(args.out)
    started = time.perf_counter()
    print(f"machine: {machine()}; torch {torch.__version__}; median of {args.repeats}", flush=True)

    peak_tflops = None  # measured by the ceilings section; without it only the datasheet MFU is printed
    if "ceilings" in args.sections:
        peak_tflops, rows = measure_ceilings(device, args.repeats)
        report.section("ceilings", ["measurement", "rate"], rows)
    if "tangent" in args.sections:  # before the main model exists, so each row's peak memory is its own
        bench_tangent(args, device, report)
    model = MaskDiT.from_preset(args.preset, cross_attention=True).to(device)
    params = sum(p.numel() for p in model.parameters())
    print(f"\n{args.preset} with cross-attention: {params / 1e6:.0f}M parameters, {model.num_tokens} tokens",
          flush=True)
    # Counted in eager mode before anything is compiled (dynamo skips frames first seen under a dispatch mode).
    patch_size = model.config.patch_size
    flops = {r: counted_flops_per_sample(model, FACMObjective(OBJECTIVES["fm"], patch_size=patch_size, mask_ratio=r),
                                         2, device)
             for r in MASK_RATIOS}
    if "train" in args.sections:
        bench_train(model, args, device, flops, peak_tflops, report)
    vae_config = SMALL_VAE_CONFIG if args.small_encoders else SDXL_VAE_CONFIG
    vae = AutoencoderKL(**vae_config).to(device).eval()
    if "sampling" in args.sections:
        bench_sampling(model, vae, args, device, report)
    if "encode" in args.sections:
        clip_config = SMALL_CLIP_CONFIG if args.small_encoders else CLIP_L_TEXT_CONFIG
        text_encoder = CLIPTextModel(CLIPTextConfig(**clip_config)).to(device).eval()
        bench_encode(vae, text_encoder, args, device, report)
    if "compile" in args.sections:
        model.compile_blocks()
        bench_train(model, args, device, flops, peak_tflops, report, mode="compiled blocks")
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
