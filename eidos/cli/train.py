"""`eidos train`: train (or resume) a run from a YAML config plus dotted overrides."""

from __future__ import annotations

import argparse
import os
import sys

from eidos.cli.checks import check_writable_folder, load_user_config

DEFAULT_CONFIG = "eidos/config.yaml (the embedded OpenMoji default)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "--config_file", dest="config", default=None,
                        help=f"YAML config file (default: {DEFAULT_CONFIG})")
    parser.add_argument("--output-dir",
                        help="run folder (train.output_dir); rerunning resumes from its latest checkpoint")
    parser.add_argument("--max-steps", type=int, help="total optimizer steps over all stages (train.max_steps)")
    parser.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (train.checkpoint_every)")
    parser.add_argument("--init-from", help="fine-tune: start from this trained model (export, checkpoint or run "
                        "folder, or Hub id; train.init_from)")
    parser.add_argument("--seed", type=int, help="seed of data order, noise, masks and init (train.seed)")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="dotted config overrides, e.g. train.batch_size=32 model.preset=tiny")


def config_from_args(args: argparse.Namespace):
    from eidos.config import default_config_path

    overrides = list(args.overrides)
    for flag, key in (("output_dir", "train.output_dir"), ("max_steps", "train.max_steps"),
                      ("checkpoint_every", "train.checkpoint_every"), ("seed", "train.seed"),
                      ("init_from", "train.init_from")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    return load_user_config(args.config or default_config_path(), overrides)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # validated before any heavy import or work
    check_writable_folder(config.train.output_dir, "train.output_dir")
    from eidos.training.checkpoint import CheckpointError
    from eidos.training.faults import NonFiniteTraining, TrainingInterrupted
    from eidos.training.loop import train
    from eidos.training.teacher import exported_teachers

    try:
        final = train(config)
    except TrainingInterrupted as interrupted:
        print(f"eidos train: {interrupted}", file=sys.stderr)
        return 128 + int(interrupted.signum)
    except (NonFiniteTraining, CheckpointError) as error:
        print(f"eidos train: {error}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":  # once, not once per process under torchrun
        distilled = "".join(f"; the flow model its consistency stage distilled in {t}"
                            for t in exported_teachers(final.parent))
        print(f"done: exported model in {final}{distilled}; sample grids in {final.parent / 'samples'}")
    return 0
