"""Sampling throughput: images/s of consistency sampling (1, 2, 4 steps) and flow Euler with CFG, at batch 1
and a large batch, transformer and codec decode timed separately.

    python -m benchmarks.sampling --model runs/openmoji/model        # an exported pipeline folder
    python -m benchmarks.sampling --preset tiny                       # random weights, same cost
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import machine, median_seconds, print_table
from eidos import EidosPipeline, MaskDiT, PixelCodec, TextEmbeddings
from eidos.encoders import decode
from eidos.sampling import network_evaluations, sample_consistency, sample_flow_euler

SAMPLING_HEADER = ["sampler", "batch", "network evals / image", "transformer ms", "images/s (transformer)",
                   "images/s (with decode)", "decode ms"]


def measure_sampling(model, codec, batch: int, flow_steps: int, repeats: int, device,
                     text_tokens: int = 16) -> list[list]:
    """Rows of SAMPLING_HEADER: consistency 1/2/4 steps and flow + CFG (a third of the repeats: it is slow)."""
    c = model.config
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(batch, c.in_channels, c.sample_size, c.sample_size, generator=generator).to(device)
    text = TextEmbeddings(torch.randn(batch, c.text_dim), torch.randn(batch, text_tokens, c.text_dim),
                          torch.ones(batch, text_tokens, dtype=torch.bool)).to(device)
    runs = {f"consistency {n}": (network_evaluations("consistency", n),
                                 lambda n=n: sample_consistency(model, noise, text, num_steps=n)) for n in (1, 2, 4)}
    runs[f"flow {flow_steps} + CFG"] = (network_evaluations("flow", flow_steps, guidance_scale=2.0),
                                        lambda: sample_flow_euler(model, noise, text, flow_steps, guidance_scale=2.0))
    rows = []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        decode_seconds = median_seconds(lambda: decode(codec, noise), device, repeats)
        for name, (evaluations, fn) in runs.items():
            seconds = median_seconds(fn, device, repeats if evaluations <= 8 else max(1, repeats // 3), warmup=1)
            rows.append([name, batch, evaluations, f"{seconds * 1000:.1f}", f"{batch / seconds:.1f}",
                         f"{batch / (seconds + decode_seconds):.1f}", f"{decode_seconds * 1000:.2f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="exported EidosPipeline folder (default: a random --preset model)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--flow-steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.model:
        pipe = EidosPipeline.from_pretrained(args.model).to(device)
        model, codec = pipe.transformer, pipe.vae
    else:
        model, codec = MaskDiT.from_preset(args.preset, cross_attention=True).to(device).eval(), PixelCodec()
    print(f"machine: {machine()}; torch {torch.__version__}; bf16 autocast; median of {args.repeats}\n")
    rows = []
    for batch in args.batches:
        rows += measure_sampling(model, codec, batch, args.flow_steps, args.repeats, device)
    print_table(SAMPLING_HEADER, rows)


if __name__ == "__main__":
    main()
