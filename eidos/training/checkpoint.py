"""Checkpoints in OUTPUT_DIR/checkpoint-<step>/ (the diffusers/accelerate convention).

Each holds `accelerator.save_state` (model, optimizer), the EMA weights (safetensors), trainer_state.json
(step, stage, samples seen) and an export of the EMA model. It is written to a hidden temp folder and renamed
into place, so a folder named checkpoint-<step> is always complete; the newest `total_limit` are kept.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from eidos.training.ema import EMA

PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written; the previous ones are untouched."""


@dataclass
class TrainerState:
    step: int = 0
    samples_seen: int = 0
    skipped_steps: int = 0


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := PATTERN.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if (p / STATE_FILE).exists()]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: Path,
    state: TrainerState,
    ema: EMA,
    export: Callable[[Path], None],
    total_limit: int,
) -> Path:
    """Write checkpoint-<step> atomically (all processes call this); returns its path.

    A failed write (disk full, quota, I/O error) on any process removes the temp folder, keeps every older
    checkpoint and raises `CheckpointError` on all processes together.
    """
    final = output_dir / f"checkpoint-{state.step}"
    tmp = output_dir / f".checkpoint-{state.step}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    failure: OSError | None = None
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            save_file(ema.state_dict(), tmp / EMA_FILE)
            (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
            export(tmp / "model")
            _fsync_tree(tmp)
    except OSError as error:
        failure = error
    failed = torch.tensor([float(failure is not None)], device=accelerator.device)
    if float(accelerator.reduce(failed, reduction="sum")) > 0:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(output_dir)
        reason = failure or "failed on another process"
        raise CheckpointError(
            f"could not write the checkpoint of step {state.step} to {output_dir}: {reason}. Older checkpoints "
            f"are intact (latest: {previous or 'none'}); free space and rerun to resume."
        ) from failure
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: Path, ema: EMA) -> TrainerState:
    """Restore model and optimizer (accelerate), EMA and trainer state from `path`.

    accelerate reads its pickles (optimizer, RNG states) with torch.load(weights_only=True): a file carrying
    anything but tensors and plain containers is refused without running it.
    """
    try:
        accelerator.load_state(str(path))
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"checkpoint {path} holds a pickle with objects other than tensors; refused to load it (nothing in it "
            f"was run). Delete the checkpoint if you did not write it. ({error})"
        ) from error
    ema.load_state_dict(load_file(path / EMA_FILE))
    return TrainerState(**json.loads((path / STATE_FILE).read_text()))


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
