"""Checks of what a user typed, run before any heavy work, each failing with one line: what, where, the fix; and
the argument several commands share.

The CLI's error boundary (eidos/cli/main.py) prints these ValueError/FileNotFoundError messages and exits 2.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """--checkpoint: the model a command reads, as `eidos.training.run_folder.resolve_model_folder` finds it."""
    parser.add_argument("--checkpoint", required=True,
                        help="exported model folder, run folder (its final export, else its latest checkpoint's) "
                             "or checkpoint folder")


def load_user_config(path: str | Path, overrides: list[str]):
    """`load_config` of a user's file and overrides, with its failures as one-line messages naming the file."""
    from eidos.config import load_config

    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"--config {path} is a folder; name a YAML file (e.g. {path / 'config.yaml'})")
    if not path.is_file():
        raise FileNotFoundError(f"--config {path} does not exist")
    try:
        config = load_config(path, overrides)
    except yaml.YAMLError as error:
        raise ValueError(f"config file {path} is not valid YAML: {yaml_problem(error)}; fix the file") from None
    except UnicodeDecodeError:
        raise ValueError(f"config file {path} is not UTF-8 text; save it as UTF-8") from None
    return config


def yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's several-line report as one line: the problem and where."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def check_device(device: str) -> None:
    """Refuse a --device torch cannot use here (a typo, CUDA on a machine without it)."""
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device name; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available to this torch {torch.__version__}; use "
                         "--device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: there are {torch.cuda.device_count()} CUDA device(s); use cuda:0 to "
                         f"cuda:{torch.cuda.device_count() - 1}")


def check_writable_folder(folder: str | Path, key: str) -> None:
    """Refuse an output folder that is a file, sits under a file, or cannot be written (read-only, permissions)."""
    folder = Path(folder).expanduser()
    existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    if not existing.is_dir():
        where = "is" if existing == folder else f"is under {existing}, which is"
        raise ValueError(f"{key} {folder} {where} a file, not a folder; choose another folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ValueError(f"{key} {folder} cannot be written ({error.strerror} in {existing}); choose another folder "
                         "or make it writable") from None
