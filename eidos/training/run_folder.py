"""A run folder: who owns it, and where its model and config are.

`eidos train` writes only into an empty folder or into its own earlier run. A folder holding anything else (a
foreign config.yaml, another run's config, files eidos did not write) is refused before any work starts, so a
mistyped --output-dir never overwrites a user's files. `eidos sample`, `eval`, `export` and `serve` take a run
folder, a checkpoint or an export and find the model (and `eval` the run's config) in it.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from eidos.config import load_config
from eidos.sampling.pipeline import is_pipeline_folder
from eidos.training.checkpoint import latest_checkpoint

CONFIG_FILE = "config.yaml"
# What a run writes besides its config: checkpoints (and their temp folders), sample grids, metrics, tensorboard
# logs, the weights of frozen consistency teachers (runs before the teacher export) and the hidden folders an
# export is written into before its rename (eidos/sampling/pipeline.py).
RUN_ENTRY = re.compile(r"^(\.?checkpoint-\d+(\.tmp)?|samples|metrics\.jsonl|eidos|"
                       r"\.?teacher-\d+\.safetensors(\.tmp)?|\.(model|teacher-\d+)\.[0-9a-f]{8}\.(tmp|old))$")
# Pipeline folders a run exports: the final model and the consistency stages' teachers.
RUN_EXPORT = re.compile(r"^(model|teacher-\d+)$")
# Settings a rerun may change without becoming another run: how long it trains, how often it reports.
SCHEDULE_KEYS = {
    "train": {"max_steps", "checkpoint_every", "sample_every", "log_every", "checkpoints_total_limit", "tracker"},
    "sampling": None,  # None: the whole section
}


def _written_by_a_run(path: Path) -> bool:
    if RUN_EXPORT.match(path.name):
        return (path / "model_index.json").is_file()
    return bool(RUN_ENTRY.match(path.name))


def _comparable(config: dict) -> dict:
    trimmed = {}
    for section, values in config.items():
        ignored = SCHEDULE_KEYS.get(section, set())
        if ignored is None:
            continue
        trimmed[section] = {k: v for k, v in values.items() if k not in ignored} if isinstance(values, dict) \
            else values
    return trimmed


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new), key=str)
    found = []
    for key in keys:
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return found


def check_run_folder(output_dir: Path, config: dict) -> None:
    """Refuse (ValueError) to train into `output_dir` unless it is new, empty, or this same run's folder.

    `config` is the resolved config as a plain dict; the folder's config.yaml must equal it up to SCHEDULE_KEYS.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"train.output_dir {output_dir} is a file, not a folder: choose another --output-dir")
    if not output_dir.exists() or not any(output_dir.iterdir()):
        return
    saved = output_dir / CONFIG_FILE
    if not saved.is_file():
        foreign = sorted(p.name for p in output_dir.iterdir() if not _written_by_a_run(p))
        if foreign:
            raise ValueError(f"train.output_dir {output_dir} holds files eidos did not write ({', '.join(foreign[:3])}"
                             f"{', ...' if len(foreign) > 3 else ''}) and no eidos {CONFIG_FILE}: eidos trains only "
                             f"into a new or empty folder or resumes its own run; choose another --output-dir")
        return  # only checkpoints and other run outputs (e.g. a checkpoint copied in to resume from)
    try:
        raw = yaml.safe_load(saved.read_text())
        if not isinstance(raw, dict) or not {"model", "train", "objective"} <= raw.keys():
            raise ValueError("no model/train/objective sections")
        old = load_config(saved).to_dict()  # older key spellings are migrated as for any config
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{saved} is not an eidos run config ({error}); not overwriting it: choose another "
                         f"--output-dir") from None
    changed = _differences(_comparable(old), _comparable(config))
    if changed:
        shown = "; ".join(changed[:5]) + (f"; and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise ValueError(f"train.output_dir {output_dir} holds another run (its {CONFIG_FILE} differs: {shown}). "
                         f"Rerun with that run's settings to resume it, or choose another --output-dir")


def resolve_model_folder(path: str | Path) -> Path:
    """An exported pipeline folder, a run folder (its final export, else its latest checkpoint's) or a checkpoint."""
    path = Path(path)
    candidates = [path, path / "model"]
    checkpoint = latest_checkpoint(path)
    if checkpoint is not None:
        candidates.append(checkpoint / "model")
    for candidate in candidates:
        if is_pipeline_folder(candidate):
            return candidate
    raise FileNotFoundError(
        f"{path} is not an exported model, a run folder or a checkpoint (no model_index.json in {path}, "
        f"{path / 'model'} or its latest checkpoint)"
    )


def run_config_path(model_folder: Path) -> Path | None:
    """The config.yaml of the run an export belongs to (run/model, run/checkpoint-N/model)."""
    for folder in (model_folder, model_folder.parent, model_folder.parent.parent):
        if (folder / CONFIG_FILE).is_file():
            return folder / CONFIG_FILE
    return None
