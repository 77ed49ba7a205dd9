"""`eidos export`: write the EMA model of a run or checkpoint as a standalone EidosPipeline folder."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="run folder (its final export, else its latest checkpoint), checkpoint folder, "
                             "or an exported model folder")
    parser.add_argument("--out", required=True, help="folder to write (model_index.json + one folder per component)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID",
                        help="also upload the folder to this Hugging Face Hub model repo (needs `huggingface-cli "
                             "login` and network access)")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo as private")


def run(args: argparse.Namespace) -> int:
    from eidos.cli.sample import resolve_model_folder
    from eidos.sampling.pipeline import EidosPipeline, save_pipeline

    source = resolve_model_folder(args.checkpoint)
    pipeline = EidosPipeline.from_pretrained(source)
    save_pipeline(pipeline, args.out)
    print(f"exported {source} to {args.out}")
    if args.push_to_hub:
        pipeline.push_to_hub(args.push_to_hub, private=args.private)
        print(f"pushed to https://huggingface.co/{args.push_to_hub}")
    return 0
