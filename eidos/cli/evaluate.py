"""`eidos eval`: sample quality of an exported model at 1/2/4 consistency steps and N flow steps.

For every held-out caption of the run's data, one image per sampler setting (seed + i for the i-th caption).
Reported per setting: the Fréchet distance of their features to the training images' (an FID with --features
inception, at this sample size: not comparable with published 50k-sample FIDs), the caption-alignment hit rates
at 1 and 5 (eidos/evaluation/alignment.py) and images/s. The real held-out images (through the codec), scored
the same way, are the reference: what a generator that generalises perfectly would score at this sample size.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

RUN_CONFIG = "config.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="exported model folder, run folder (its latest export) or checkpoint folder")
    parser.add_argument("--config", default=None,
                        help="config naming the data (default: the run's config.yaml, else the embedded default)")
    parser.add_argument("--features", default="pixels",
                        help="pixels (offline, default), inception (torch-fidelity) or package.module:factory")
    parser.add_argument("--inception-weights", help="local copy of the FID Inception weights (with --features "
                        "inception)")
    parser.add_argument("--consistency-steps", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--flow-steps", type=int, help="flow Euler steps (default sampling.flow_steps; 0 = none)")
    parser.add_argument("--guidance-scale", type=float, help="CFG of flow sampling (default sampling.guidance_scale)")
    parser.add_argument("--max-prompts", type=int, help="use the first N held-out captions (default: all)")
    parser.add_argument("--max-references", type=int, default=10_000,
                        help="training images in the reference set (a seeded subset when there are more)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", help="also write the rows as JSON here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="dotted config overrides")


def run_config_path(model_folder: Path) -> Path | None:
    """The config.yaml of the run an export belongs to (run/model, run/checkpoint-N/model)."""
    for folder in (model_folder, model_folder.parent, model_folder.parent.parent):
        if (folder / RUN_CONFIG).is_file():
            return folder / RUN_CONFIG
    return None


def run(args: argparse.Namespace) -> int:
    from eidos.cli.checks import check_device, load_user_config
    from eidos.cli.sample import resolve_model_folder
    from eidos.cli.train import default_config_path

    if any(n < 1 for n in args.consistency_steps) or (args.flow_steps or 0) < 0:
        raise ValueError("--consistency-steps must be >= 1 and --flow-steps >= 0")
    for flag in ("max_prompts", "max_references", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    check_device(args.device)
    model_folder = resolve_model_folder(args.checkpoint)
    config_path = args.config or run_config_path(model_folder)
    if config_path is None:
        raise ValueError(f"{model_folder} is not inside a run folder with a {RUN_CONFIG}: name the config of the "
                         f"data to evaluate on with --config (e.g. {default_config_path()} for OpenMoji)")
    config = load_user_config(config_path, args.overrides)  # validated before anything heavy loads
    rows = evaluate_model(model_folder, config, args)
    print_rows(rows, args)
    if args.out:
        Path(args.out).write_text(json.dumps({"model": str(model_folder), "config": str(config_path),
                                              "features": args.features, "rows": rows}, indent=2))
        print(f"wrote {args.out}")
    return 0


def evaluate_model(model_folder: Path, config, args: argparse.Namespace) -> list[dict]:
    from eidos.data.sources import load_encoded_sets
    from eidos.encoders import TextEncoder
    from eidos.evaluation.features import load_feature_extractor
    from eidos.evaluation.report import evaluate
    from eidos.sampling.pipeline import EidosPipeline

    pipeline = EidosPipeline.from_pretrained(model_folder).to(args.device)
    pipeline.set_progress_bar_config(disable=True)
    text_encoder = TextEncoder(pipeline.text_encoder, pipeline.tokenizer, pipeline.config.text_pooling,
                               pipeline.config.text_max_length)
    train_set, held_out = load_encoded_sets(config, pipeline.vae, text_encoder)
    if held_out is None or len(held_out) < 2:
        raise ValueError("eval needs at least 2 held-out samples (data.held_out_files, or the OpenMoji split)")
    model = pipeline.transformer.config
    expected = ((model.in_channels, model.sample_size, model.sample_size), model.text_dim)
    if (held_out.latent_shape, held_out.text_dim) != expected:
        raise ValueError(f"the configured data has latents {held_out.latent_shape} and text dim "
                         f"{held_out.text_dim}, but {model_folder} was trained on {expected[0]} and {expected[1]}: "
                         "evaluate with the config of the model's own run")
    count = min(len(held_out), args.max_prompts or len(held_out))
    prompts = captioned_images(pipeline, held_out, torch.arange(count), args)
    generator = torch.Generator().manual_seed(args.seed)
    chosen = torch.randperm(len(train_set), generator=generator)[: args.max_references].sort().values
    reference = captioned_images(pipeline, train_set, chosen, args)

    flow_steps = config.sampling.flow_steps if args.flow_steps is None else args.flow_steps
    guidance = config.sampling.guidance_scale if args.guidance_scale is None else args.guidance_scale
    settings = {f"consistency {n} step{'s' * (n > 1)}": ("consistency", n, 1.0) for n in args.consistency_steps}
    if flow_steps:
        settings[f"flow {flow_steps} steps, CFG {guidance:g}"] = ("flow", flow_steps, guidance)
    generators = {name: (lambda s=setting: generate(pipeline, prompts.captions, *s, args))
                  for name, setting in settings.items()}
    extractor = load_feature_extractor(args.features, args.device, args.inception_weights)
    return evaluate(generators, prompts, reference, extractor)


def captioned_images(pipeline, encoded, indices: torch.Tensor, args: argparse.Namespace):
    """Rows `indices` of an encoded set as images (the codec's decode of the posterior mean)."""
    from eidos.encoders import decode
    from eidos.encoders.pixels import to_uint8
    from eidos.evaluation.report import CaptionedImages

    rows = encoded.rows(indices)
    # uint8 on CPU: a quarter of the memory for the reference set (8 GB -> 2 GB at 10k x 256 px)
    images = [to_uint8(decode(pipeline.vae, chunk.float().to(args.device))).cpu()
              for chunk in rows.latent_mean.split(args.batch_size)]
    return CaptionedImages(torch.cat(images), rows.captions, rows.text.pooled.float())


@torch.no_grad()
def generate(pipeline, captions: list[str], sampler: str, steps: int, guidance: float, args) -> torch.Tensor:
    """One image per caption, the i-th from seed + i, in batches."""
    from eidos.encoders.pixels import to_uint8

    images = []
    for start in range(0, len(captions), args.batch_size):
        chunk = captions[start:start + args.batch_size]
        generators = [torch.Generator(device=args.device).manual_seed(args.seed + start + i) for i in range(len(chunk))]
        out = pipeline(chunk, num_inference_steps=steps, sampler=sampler, guidance_scale=guidance,
                       generator=generators, output_type="pt").images
        images.append(to_uint8(out).cpu())
    return torch.cat(images)


def print_rows(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"\nfeatures: {args.features}; Fréchet distance to the training images; caption alignment hit rates "
          f"(real held-out = the reference, chance = k / distinct prompts)\n")
    print("| images | Fréchet distance | top-1 | top-5 | images/s |")
    print("|---|---|---|---|---|")
    for row in rows:
        frechet = f"{row['frechet']:.2f}" if "frechet" in row else "-"
        speed = f"{row['images/s']:.1f}" if "images/s" in row else "-"
        print(f"| {row['images']} | {frechet} | {row['top-1']:.1%} | {row['top-5']:.1%} | {speed} |")
