"""`eidos sample`: prompts -> images with an exported model, a run folder or a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from eidos.cli.checks import add_model_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--prompt", action="append", required=True, help="a prompt; repeat for several")
    parser.add_argument("--steps", type=int, default=1, help="sampling steps (default 1)")
    parser.add_argument("--sigmas", type=float, nargs="+", metavar="S",
                        help="noise levels to step from instead of --steps' uniform grid (from 1 down, e.g. 1 0.67)")
    parser.add_argument("--sampler", choices=("consistency", "flow"), default="consistency",
                        help="consistency (1, 2, N steps) or flow Euler (default consistency)")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="CFG scale for flow sampling")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image")
    parser.add_argument("--num-seeds", type=int, default=1, help="images per prompt (seeds seed, seed+1, ...)")
    parser.add_argument("--out", required=True, help="output PNG (a grid when several prompts or seeds)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def run(args: argparse.Namespace) -> int:
    from eidos.cli.checks import check_device
    from eidos.image_grids import labelled_grid
    from eidos.sampling.pipeline import EidosPipeline
    from eidos.sampling.solvers import check_sigmas
    from eidos.training.run_folder import resolve_model_folder

    if args.steps < 1 or args.num_seeds < 1:
        raise ValueError("--steps and --num-seeds must be >= 1")
    if args.sigmas is not None:
        check_sigmas(args.sigmas)
    check_device(args.device)
    pipeline = EidosPipeline.from_pretrained(resolve_model_folder(args.checkpoint)).to(args.device)
    pipeline.set_progress_bar_config(disable=True)
    guidance = {"guidance_scale": args.guidance_scale} if args.sampler == "flow" else {}
    columns = {}
    for seed in range(args.seed, args.seed + args.num_seeds):
        generators = [torch.Generator(device=args.device).manual_seed(seed) for _ in args.prompt]
        images = pipeline(args.prompt, num_inference_steps=args.steps, sampler=args.sampler, sigmas=args.sigmas,
                          generator=generators, **guidance).images
        columns[f"seed {seed}"] = images
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(args.prompt) == 1 and args.num_seeds == 1:
        image = next(iter(columns.values()))[0]
    else:
        image = labelled_grid(columns, args.prompt, cell_size=max(64, images[0].size[0]))
    image.save(out)
    print(f"wrote {out}")
    return 0
