"""Checkpoints in OUTPUT_DIR/checkpoint-<step>/ (the diffusers/accelerate convention).

Each holds `accelerator.save_state` (model, optimizer), the EMA weights (safetensors), trainer_state.json
(step, stage, samples seen) and an export of the EMA model. It is written to a hidden temp folder and renamed
into place, so a folder named checkpoint-<step> is always complete; the newest `total_limit` are kept.

A checkpoint damaged after it was written (a file truncated by a copy, emptied, edited) is found before it is
trusted (eidos/training/checkpoint_check.py): resuming falls back to the newest intact one with a warning, and
the damaged folder is left where it is until the run reaches its step again, then renamed aside.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from eidos.training.checkpoint_check import STATE_FILE, damage
from eidos.training.ema import EMA

logger = logging.getLogger(__name__)

PATTERN = re.compile(r"^checkpoint-(\d+)$")
EMA_FILE = "ema.safetensors"
# What the writers raise when the disk fills or fails: OSError (json, tokenizer files), SafetensorError
# (safetensors' Rust writer) and RuntimeError (torch.save's zip writer: "PytorchStreamWriter failed writing").
WRITE_ERRORS = (OSError, SafetensorError, RuntimeError)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written; the previous ones are untouched."""


@dataclass
class TrainerState:
    step: int = 0
    samples_seen: int = 0
    skipped_steps: int = 0
    mixed_precision: str = ""  # what the run trains in, "auto" resolved ("" in checkpoints from before it was kept)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := PATTERN.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if (p / STATE_FILE).exists()]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest intact checkpoint; newer damaged ones are skipped with a warning naming what is damaged (and
    left in place). When none is intact, the newest one, so that loading it explains the damage."""
    checkpoints = list_checkpoints(output_dir)
    for checkpoint in reversed(checkpoints):
        problems = damage(checkpoint)
        if not problems:
            return checkpoint
        logger.warning("checkpoint %s is damaged (%s); skipping it (left in place)", checkpoint,
                       "; ".join(problems))
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
    failure: Exception | None = None
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            save_file(ema.state_dict(), tmp / EMA_FILE)
            (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
            export(tmp / "model")
            _fsync_tree(tmp)
    except WRITE_ERRORS as error:
        failure = error
    failed = torch.tensor([float(failure is not None)], device=accelerator.device)
    if float(accelerator.reduce(failed, reduction="sum")) > 0:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(output_dir)
        reason = f"{type(failure).__name__}: {failure}" if failure else "failed on another process"
        raise CheckpointError(
            f"could not write the checkpoint of step {state.step} to {output_dir}: {reason}. Older checkpoints "
            f"are intact (latest: {previous or 'none'}); free space and rerun to resume."
        ) from failure
    if accelerator.is_main_process:
        if final.exists():
            _replace_aside(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: Path, ema: EMA) -> TrainerState:
    """Restore model and optimizer (accelerate), EMA and trainer state from `path`.

    accelerate reads its pickles (optimizer, RNG states) with torch.load(weights_only=True): a file carrying
    anything but tensors and plain containers is refused without running it. A damaged checkpoint (see
    `latest_checkpoint`, which only returns one when no intact checkpoint is left) is refused before any of it
    is loaded.
    """
    problems = damage(path)
    if problems:
        raise ValueError(
            f"checkpoint {path} is damaged ({'; '.join(problems)}) and no older checkpoint in {path.parent} is "
            f"intact; nothing was loaded. Move the damaged checkpoint folders out of {path.parent} to start the run "
            "over, or restore them from a copy."
        )
    try:
        accelerator.load_state(str(path))
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"checkpoint {path} holds a pickle with objects other than tensors; refused to load it (nothing in it "
            f"was run). Delete the checkpoint if you did not write it. ({error})"
        ) from error
    _warn_about_random_states(path, accelerator.process_index)
    ema.load_state_dict(load_file(path / EMA_FILE))
    return TrainerState(**json.loads((path / STATE_FILE).read_text()))


def _warn_about_random_states(path: Path, process_index: int) -> None:
    """accelerate skips an unreadable random-state file with an INFO line; say plainly what it costs."""
    states = path / f"random_states_{process_index}.pkl"
    try:
        accelerate_load(states)  # what accelerate's load_state reads it with (weights_only, numpy allowed)
    except Exception as error:  # noqa: BLE001 - any failure means the states were not restored
        logger.warning("%s could not be read (%s: %s): the random states were not restored, so this resumed run "
                       "is no longer bit-exact (every step's noise still comes from (seed, rank, step))", states,
                       type(error).__name__, error)


def _replace_aside(final: Path) -> None:
    """Make room for a new checkpoint-<step>: an intact older save of the same step is replaced; a damaged one
    is kept, renamed to checkpoint-<step>.damaged (-2, -3, ... when taken), which no listing matches."""
    problems = damage(final)
    if not problems:
        shutil.rmtree(final)
        return
    aside, number = final.with_name(f"{final.name}.damaged"), 1
    while aside.exists():
        number += 1
        aside = final.with_name(f"{final.name}.damaged-{number}")
    os.replace(final, aside)
    logger.warning("renamed the damaged %s to %s (%s); delete it when you no longer need it", final, aside.name,
                   "; ".join(problems))


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
