"""Is a checkpoint intact? Cheap checks of every file a resume reads, before any of it is trusted.

A file truncated by an interrupted copy, emptied by a full disk or cut by hand is found without reading the
weights: safetensors headers must parse and cover the file exactly, torch.save archives (the optimizer) must
be whole zip archives whose pickle loads with weights_only=True (tensors memory-mapped, not read), and
trainer_state.json must parse. A few flipped bytes inside a tensor are not found (nothing stores checksums).
The RNG states are not checked: accelerate skips an unreadable one and the run goes on, only not bit-exact.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

STATE_FILE = "trainer_state.json"
REQUIRED = ("model.safetensors", "optimizer.bin", "ema.safetensors", STATE_FILE)


def damage(checkpoint: Path) -> list[str]:
    """What is wrong with `checkpoint`, one entry per damaged or missing file (empty when intact)."""
    problems = [f"{name} is missing" for name in REQUIRED if not (checkpoint / name).is_file()]
    for path in sorted(checkpoint.glob("*.safetensors")):
        problems += _problem(path, _safetensors_problem)
    for path in sorted(checkpoint.glob("*.bin")):
        problems += _problem(path, _torch_archive_problem)
    if (checkpoint / STATE_FILE).is_file():
        problems += _problem(checkpoint / STATE_FILE, _state_problem)
    return problems


def _problem(path: Path, check) -> list[str]:
    if path.stat().st_size == 0:
        return [f"{path.name} is empty"]
    found = check(path)
    return [f"{path.name} {found}"] if found else []


def _safetensors_problem(path: Path) -> str | None:
    try:
        with safe_open(path, framework="pt") as handle:  # validates the header against the file's size
            handle.keys()
    except SafetensorError as error:
        return f"is truncated or corrupt ({_first_line(error)})"
    return None


def _torch_archive_problem(path: Path) -> str | None:
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives; a cut one has lost its directory
        return "is truncated or not a torch.save archive (eidos writes no other kind)"
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        return f"holds objects other than tensors; refused to load it, nothing in it was run ({_first_line(error)})"
    except Exception as error:  # noqa: BLE001 - damaged bytes fail in many ways inside the unpickler
        return f"is corrupt ({type(error).__name__}: {_first_line(error)})"
    return None


def _state_problem(path: Path) -> str | None:
    try:
        state = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"is cut or corrupt ({_first_line(error)})"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or state["step"] < 0:
        return f"has no step count ({str(state)[:80]})"
    return None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
