"""One optimizer step: pick the stage (entering one sets up its objective, teacher, optimizer and EMA), set the
learning rate, accumulate gradients over micro-batches, clip, then step and update the EMA, or skip a step whose
loss or gradient is not finite. Every random draw of a step comes from a generator seeded by
(seed, rank, step, micro-batch)."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from eidos.data.batch_order import EncodedBatch
from eidos.objectives import FACMObjective
from eidos.training.checkpoint import latest_checkpoint
from eidos.training.faults import NonFiniteTraining
from eidos.training.optimizer import MuonWithAdamW
from eidos.training.schedule import ema_start, learning_rate, stage_start, step_seed
from eidos.training.setup import Run
from eidos.training.teacher import frozen_teacher

logger = logging.getLogger(__name__)


@dataclass
class StepResult:
    """What a step reports: its loss parts (averaged over micro-batches), gradient norm, learning rate, stage."""

    parts: dict[str, torch.Tensor]
    grad_norm: torch.Tensor
    lr: float
    stage: int


class Stepper:
    """Takes optimizer steps; holds what lasts from step to step: the current stage and its objective, and the
    count of non-finite steps in a row."""

    def __init__(self, run: Run):
        self.run = run
        self.stage_index = -1
        self.objective: FACMObjective | None = None
        self.ema_origin = 0
        self.consecutive_skips = 0

    def step(self, batches: Iterator[EncodedBatch]) -> StepResult:
        run, cfg = self.run, self.run.config.train
        index, lr = learning_rate(run.config, run.state.step)
        if index != self.stage_index:
            self._enter_stage(index)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        parts = self._accumulate(batches)
        grad_norm = run.accelerator.clip_grad_norm_(run.step_module.parameters(),
                                                    cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        if torch.isfinite(grad_norm):  # all-reduced gradients: every process takes the same branch
            run.optimizer.step()
            run.ema.update(run.model, run.state.step - self.ema_origin)
            self.consecutive_skips = 0
        else:
            self._skip(parts)
        run.optimizer.zero_grad(set_to_none=True)
        run.state.step += 1
        run.state.samples_seen += cfg.batch_size
        return StepResult(parts, grad_norm, lr, index)

    def _enter_stage(self, index: int) -> None:
        """The objective of stage `index`; at the stage's first step, its fresh optimizer and EMA restart."""
        run, stage = self.run, self.run.config.train.stages[index]
        start = stage_start(run.config, index)
        teacher = None
        if stage.consistency and run.config.objective.consistency_teacher == "frozen":
            teacher = frozen_teacher(run.accelerator, run.output_dir, start, run.state.step, run.ema, run.ema_model,
                                     run.export)
        self.objective = FACMObjective(run.config.objective, patch_size=run.model.config.patch_size,
                                       mask_ratio=stage.mask_ratio, consistency=stage.consistency, teacher=teacher)
        # At step 0 too: a fine-tune (train.init_from) whose first stage starts from the EMA or restarts it must do
        # so from its source's weights; in a fresh run these are no-ops (the EMA equals the new weights).
        entering = run.state.step == start
        if stage.reset_optimizer and entering:
            run.optimizer.state.clear()  # a fresh optimizer for this stage (DESIGN §3)
        rules = run.config.train.stage_optimizers()
        if isinstance(inner := getattr(run.optimizer, "optimizer", run.optimizer), MuonWithAdamW):
            inner.use_for_matrices(rules[index], fresh=entering and index > 0 and rules[index] != rules[index - 1])
        if stage.start_from_ema and entering:  # after the teacher took the EMA weights of this moment
            run.ema.copy_to(run.model)
        if stage.restart_ema and entering:
            run.ema.restart(run.model)
        self.stage_index = index
        self.ema_origin = ema_start(run.config, index)  # once per stage, not every step
        both = " (both branches)" if run.config.objective.pretrain_consistency_branch else ""
        logger.info("stage %r from step %d: mask ratio %.2f, %s; block matrices with %s", stage.name, run.state.step,
                    stage.mask_ratio, "consistency" if stage.consistency else f"flow{both}", rules[index])

    def _accumulate(self, batches: Iterator[EncodedBatch]) -> dict[str, torch.Tensor]:
        """Gradients of the step's micro-batches (synchronised across processes at the last one); the loss parts
        averaged over them."""
        run, cfg = self.run, self.run.config.train
        accumulation = cfg.grad_accumulation_steps
        parts_sum: dict[str, torch.Tensor] = {}
        for micro in range(accumulation):
            batch = next(batches)
            seed = step_seed(cfg.seed, run.layout.rank, run.state.step, micro)
            generator = torch.Generator(device=run.device).manual_seed(seed)
            last = micro == accumulation - 1
            with contextlib.nullcontext() if last else run.accelerator.no_sync(run.step_module):
                with run.autocast():
                    loss, parts = run.step_module(self.objective, batch.sample(generator), generator)
                run.accelerator.backward(loss / accumulation)
            for name, value in parts.items():
                parts_sum[name] = parts_sum.get(name, 0) + value / accumulation
        return parts_sum

    def _skip(self, parts: dict[str, torch.Tensor]) -> None:
        """A non-finite step changes no weight; too many in a row stop the run."""
        run = self.run
        run.state.skipped_steps += 1
        self.consecutive_skips += 1
        parts_text = {k: round(float(v), 4) for k, v in parts.items()}
        logger.warning("step %d: non-finite loss or gradient, step skipped (%s)", run.state.step, parts_text)
        if self.consecutive_skips >= run.config.train.max_consecutive_skips:
            raise NonFiniteTraining(
                f"stopped at step {run.state.step}: {self.consecutive_skips} consecutive non-finite steps (loss parts "
                f"{parts_text}); last good checkpoint: {latest_checkpoint(run.output_dir) or 'none'}. Lower the "
                f"learning rate, turn mixed precision off or use objective.tangent=finite_difference"
            )
