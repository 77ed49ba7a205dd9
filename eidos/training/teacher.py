"""The frozen teacher of a consistency stage (objective.consistency_teacher: frozen).

When the stage begins, the EMA weights of that moment become the teacher: the best flow model the run has,
and one that stops moving while the student's consistency branch learns from it. They are saved once as
OUTPUT_DIR/teacher-<step>.safetensors (written to a temp file, then renamed), so a run resumed in the middle of
the stage distils the same teacher.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import nn

from eidos.training.checkpoint import WRITE_ERRORS, CheckpointError
from eidos.training.ema import EMA

logger = logging.getLogger(__name__)


def teacher_path(output_dir: Path, stage_start_step: int) -> Path:
    return output_dir / f"teacher-{stage_start_step}.safetensors"


def frozen_teacher(
    accelerator: Accelerator, output_dir: Path, stage_start_step: int, step: int, ema: EMA, ema_model: nn.Module,
) -> nn.Module:
    """The teacher of the consistency stage that began at `stage_start_step` (we are at `step`): made from the
    EMA and saved when the stage begins, read back when a run resumes inside the stage. Frozen, in eval mode."""
    path = teacher_path(output_dir, stage_start_step)
    teacher = copy.deepcopy(ema_model).eval().requires_grad_(False)
    if step == stage_start_step:
        ema.copy_to(teacher)
        failure: Exception | None = None
        if accelerator.is_main_process:
            tmp = path.with_name(f".{path.name}.tmp")
            try:
                save_file({name: p.detach().contiguous() for name, p in teacher.named_parameters()}, tmp)
                os.replace(tmp, path)
                logger.info("consistency teacher: the EMA weights of step %d, saved to %s", step, path)
            except WRITE_ERRORS as error:  # a full disk: say so on every process, keep what was there
                failure = error
                tmp.unlink(missing_ok=True)
        failed = torch.tensor([float(failure is not None)], device=accelerator.device)
        if float(accelerator.reduce(failed, reduction="sum")) > 0:
            reason = f"{type(failure).__name__}: {failure}" if failure else "failed on another process"
            raise CheckpointError(f"could not write the consistency teacher {path}: {reason}. The checkpoints are "
                                  f"intact; free space and rerun to resume.") from failure
        return teacher
    if not path.is_file():
        raise ValueError(f"resuming inside the consistency stage that began at step {stage_start_step} needs its "
                         f"frozen teacher {path}, which is missing: restore it, or restart the run in a new folder")
    state = load_file(path, device=str(next(teacher.parameters()).device))
    missing = teacher.load_state_dict(state, strict=False).missing_keys
    parameters = {name for name, _ in teacher.named_parameters()}
    if parameters & set(missing) or not state.keys() <= parameters:
        raise ValueError(f"{path} does not hold this model's weights (missing {sorted(parameters & set(missing))[:3]})")
    return teacher
