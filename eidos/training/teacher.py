"""The frozen teacher of a consistency stage (objective.consistency_teacher: frozen).

When the stage begins, the EMA weights of that moment become the teacher: the best flow model the run has,
and one that stops moving while the student's consistency branch learns from it. It is exported once, as a
full pipeline folder OUTPUT_DIR/teacher-<step>/ (written aside, then renamed into place), for two readers: a run
resumed in the middle of the stage distils the same teacher from it, and users sample and evaluate it as the
run's flow model (`eidos sample --checkpoint RUN/teacher-<step> --sampler flow`), whichever checkpoints were kept.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from torch import nn

from eidos.sampling.pipeline import TRANSFORMER_WEIGHTS
from eidos.training.checkpoint import WRITE_ERRORS, CheckpointError
from eidos.training.ema import EMA

logger = logging.getLogger(__name__)

def teacher_folder(output_dir: Path, stage_start_step: int) -> Path:
    return output_dir / f"teacher-{stage_start_step}"


def exported_teachers(output_dir: Path) -> list[Path]:
    """The teacher folders a run exported, by step."""
    folders = [p.parent for p in output_dir.glob("teacher-*/model_index.json")]
    return sorted(folders, key=lambda folder: int(folder.name.removeprefix("teacher-")))


def legacy_teacher_file(output_dir: Path, stage_start_step: int) -> Path:
    """Where runs before the teacher export kept its weights alone; still read when they resume."""
    return output_dir / f"teacher-{stage_start_step}.safetensors"


def frozen_teacher(
    accelerator: Accelerator, output_dir: Path, stage_start_step: int, step: int, ema: EMA, ema_model: nn.Module,
    export: Callable[[Path], None],
) -> nn.Module:
    """The teacher of the consistency stage that began at `stage_start_step` (we are at `step`): made from the
    EMA and exported with `export` (which writes the EMA weights as a pipeline folder) when the stage begins,
    read back when a run resumes inside the stage. Frozen, in eval mode."""
    teacher = copy.deepcopy(ema_model).eval().requires_grad_(False)
    if step == stage_start_step:
        ema.copy_to(teacher)
        _export_teacher(accelerator, teacher_folder(output_dir, stage_start_step), step, export)
        return teacher
    path = teacher_folder(output_dir, stage_start_step) / TRANSFORMER_WEIGHTS
    if not path.is_file() and legacy_teacher_file(output_dir, stage_start_step).is_file():
        path = legacy_teacher_file(output_dir, stage_start_step)
    if not path.is_file():
        raise ValueError(f"resuming inside the consistency stage that began at step {stage_start_step} needs its "
                         f"frozen teacher {path}, which is missing: restore it, or restart the run in a new folder")
    state = load_file(path, device=str(next(teacher.parameters()).device))
    missing = set(teacher.load_state_dict(state, strict=False).missing_keys)
    parameters = {name for name, _ in teacher.named_parameters()}
    if parameters & missing or not state.keys() <= set(teacher.state_dict()):
        raise ValueError(f"{path} does not hold this model's weights (missing {sorted(parameters & missing)[:3]}, "
                         f"unexpected {sorted(state.keys() - set(teacher.state_dict()))[:3]})")
    return teacher


def _export_teacher(accelerator: Accelerator, folder: Path, step: int, export: Callable[[Path], None]) -> None:
    """The main process exports; a failure (a full disk) stops every process with a message, and the export
    (aside, then renamed) never leaves a half-written folder."""
    failure: Exception | None = None
    if accelerator.is_main_process:
        try:
            export(folder)
            logger.info("consistency teacher: the EMA weights of step %d, exported to %s", step, folder)
        except WRITE_ERRORS as error:
            failure = error
    failed = torch.tensor([float(failure is not None)], device=accelerator.device)
    if float(accelerator.reduce(failed, reduction="sum")) > 0:
        reason = f"{type(failure).__name__}: {failure}" if failure else "failed on another process"
        raise CheckpointError(f"could not write the consistency teacher {folder}: {reason}. The checkpoints are "
                              f"intact; free space and rerun to resume.") from failure
