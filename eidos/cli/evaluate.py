"""`eidos eval`: sample quality of an exported model at 1/2/4 consistency steps and N flow steps (or several N:
`--flow-steps 2 4 8 30`, quality against network evaluations).

For every held-out caption of the run's data, one image per sampler setting (seed + i for the i-th caption);
--images-per-prompt K repeats that K times with new seeds and reports each number's mean over the K rounds and
their spread (one image for each of ~100 prompts moves top-5 by a few points from seed to seed).
Reported per setting: the Fréchet distance of their features to the training images' (an FID with --features
inception, at this sample size: not comparable with published 50k-sample FIDs), the caption-alignment hit rates
at 1 and 5 (eidos/evaluation/alignment.py) and images/s. The real held-out images (through the codec), scored
the same way, are the reference: what a generator that generalises perfectly would score at this sample size.
This module reads the arguments and prints the table; the work is `eidos.evaluation.run`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from eidos.cli.checks import add_model_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--config", default=None,
                        help="config naming the data (default: the run's config.yaml, else the embedded default)")
    parser.add_argument("--features", default="pixels",
                        help="pixels (offline, default), inception (torch-fidelity) or package.module:factory")
    parser.add_argument("--inception-weights", help="local copy of the FID Inception weights (with --features "
                        "inception)")
    parser.add_argument("--consistency-steps", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--consistency-sigmas", type=float, nargs="+", metavar="S",
                        help="also score the consistency sampler stepping from these noise levels (from 1 down, "
                             "e.g. 1 0.67; default grid of N steps: 1, 1 - 1/N, ..., 1/N)")
    parser.add_argument("--flow-steps", type=int, nargs="+", metavar="N",
                        help="flow Euler steps, one row per count (default sampling.flow_steps; 0 = no flow row)")
    parser.add_argument("--guidance-scale", type=float, help="CFG of flow sampling (default sampling.guidance_scale)")
    parser.add_argument("--max-prompts", type=int, help="use the first N held-out captions (default: all)")
    parser.add_argument("--images-per-prompt", type=int, default=1,
                        help="rounds of one image per caption; each number is the mean over the rounds (default 1)")
    parser.add_argument("--max-references", type=int, default=10_000,
                        help="training images in the reference set (a seeded subset when there are more)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", help="also write the rows as JSON here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="dotted config overrides")


def run(args: argparse.Namespace) -> int:
    from eidos.cli.checks import check_device, load_user_config
    from eidos.config import default_config_path
    from eidos.evaluation.run import EvaluationSettings, evaluate_model
    from eidos.sampling.solvers import check_sigmas
    from eidos.training.run_folder import CONFIG_FILE, resolve_model_folder, run_config_path

    if any(n < 1 for n in args.consistency_steps):
        raise ValueError(f"--consistency-steps must be >= 1, got {args.consistency_steps}")
    if args.flow_steps is not None and args.flow_steps != [0] and any(n < 1 for n in args.flow_steps):
        raise ValueError(f"--flow-steps must be counts >= 1 (or 0 alone: no flow row), got {args.flow_steps}")
    if args.consistency_sigmas is not None:
        check_sigmas(args.consistency_sigmas)
    for flag in ("max_prompts", "images_per_prompt", "max_references", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    check_device(args.device)
    model_folder = resolve_model_folder(args.checkpoint)
    config_path = args.config or run_config_path(model_folder)
    if config_path is None:
        raise ValueError(f"{model_folder} is not inside a run folder with a {CONFIG_FILE}: name the config of the "
                         f"data to evaluate on with --config (e.g. {default_config_path()} for OpenMoji)")
    config = load_user_config(config_path, args.overrides)  # validated before anything heavy loads
    settings = EvaluationSettings(
        consistency_steps=args.consistency_steps, consistency_sigmas=args.consistency_sigmas,
        flow_steps=args.flow_steps, guidance_scale=args.guidance_scale,
        max_prompts=args.max_prompts, images_per_prompt=args.images_per_prompt, max_references=args.max_references,
        seed=args.seed, batch_size=args.batch_size, features=args.features,
        inception_weights=args.inception_weights, device=args.device)
    rows = evaluate_model(model_folder, config, settings)
    print_rows(rows, args)
    if args.out:
        Path(args.out).write_text(json.dumps({"model": str(model_folder), "config": str(config_path),
                                              "features": args.features, "rows": rows}, indent=2))
        print(f"wrote {args.out}")
    return 0


def print_rows(rows: list[dict], args: argparse.Namespace) -> None:
    rounds = f"; mean ± std over {args.images_per_prompt} rounds of one image per prompt" \
        if args.images_per_prompt > 1 else ""
    print(f"\nfeatures: {args.features}; Fréchet distance to the training images; caption alignment hit rates "
          f"(real held-out = the reference, chance = k / distinct prompts){rounds}\n")
    print("| images | NFE | Fréchet distance | top-1 | top-5 | images/s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        frechet = format_metric(row, "frechet", "{:.2f}")
        speed = f"{row['images/s']:.1f}" if "images/s" in row else "-"
        print(f"| {row['images']} | {row.get('nfe', '-')} | {frechet} | {format_metric(row, 'top-1', '{:.1%}')} | "
              f"{format_metric(row, 'top-5', '{:.1%}')} | {speed} |")


def format_metric(row: dict, key: str, form: str) -> str:
    if key not in row:
        return "-"
    spread = f" ± {form.format(row[key + ' std'])}" if key + " std" in row else ""
    return form.format(row[key]) + spread
