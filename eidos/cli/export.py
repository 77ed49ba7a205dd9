"""`eidos export`: write the EMA model of a run or checkpoint as a standalone EidosPipeline folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from eidos.cli.checks import add_model_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--out", required=True,
                        help="folder to write (model_index.json + one folder per component); must be new, empty, "
                             "or an earlier eidos export with --overwrite")
    parser.add_argument("--overwrite", action="store_true", help="replace an eidos export already at --out")
    parser.add_argument("--push-to-hub", metavar="REPO_ID",
                        help="also upload the folder to this Hugging Face Hub model repo (needs `huggingface-cli "
                             "login` and network access)")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo as private")


def check_out(out: Path, source: Path, overwrite: bool) -> None:
    """Refuse an --out that would replace anything but an earlier eidos export (and that only with --overwrite):
    the source model, the run folder around it, or a folder of the user's."""
    from eidos.sampling.pipeline import check_export_folder, is_eidos_export

    resolved = out.resolve()
    if resolved == source.resolve() or resolved in source.resolve().parents:
        raise ValueError(f"--out {out} holds the model being exported ({source}); writing there would replace the "
                         "run's own files: choose a folder outside it")
    check_export_folder(out, "--out")
    if is_eidos_export(out) and not overwrite:
        raise ValueError(f"--out {out} already holds an eidos export; pass --overwrite to replace it, or choose "
                         "another folder")


def run(args: argparse.Namespace) -> int:
    from eidos.sampling.pipeline import EidosPipeline, save_pipeline
    from eidos.training.run_folder import resolve_model_folder

    source = resolve_model_folder(args.checkpoint)
    out = Path(args.out).expanduser()
    check_out(out, source, args.overwrite)  # before the model loads
    pipeline = EidosPipeline.from_pretrained(source)
    save_pipeline(pipeline, out)
    print(f"exported {source} to {out}")
    if args.push_to_hub:
        pipeline.push_to_hub(args.push_to_hub, private=args.private)
        print(f"pushed to https://huggingface.co/{args.push_to_hub}")
    return 0
