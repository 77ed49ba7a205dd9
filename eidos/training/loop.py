"""The training loop: one loop for every stage and data source, on HF accelerate.

Each iteration, after EDM2's training loop: report the status, checkpoint, draw the sample grid (the snapshot),
stop if asked or done, then take one optimizer step (eidos/training/step.py). The checkpoint comes before the
grid, so a step's work is safe whatever drawing the grid does. A fresh run draws a grid at step 0. Every random
draw of a step comes from a generator seeded by (seed, rank, step, micro-batch) and the data order is a function
of (seed, samples seen), so rerunning the same command after a stop resumes the same run.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from pathlib import Path

import torch

from eidos.config import Config
from eidos.training.checkpoint import save_checkpoint
from eidos.training.faults import StopRequest, TrainingInterrupted
from eidos.training.report import Report, write_snapshot
from eidos.training.setup import Run, set_up
from eidos.training.step import Stepper

logger = logging.getLogger(__name__)


def train(config: Config) -> Path:
    """Train (or resume) the run in config.train.output_dir; returns the folder of the final exported model."""
    run = set_up(config)
    stop = StopRequest()
    batches = run.data.batches(run.state.samples_seen, run.layout, run.device)
    report = Report(run)
    try:
        _train_steps(run, batches, report, stop)
    finally:
        stop.restore()
        batches.close()
        run.data.close()
    report.close()
    final = run.output_dir / "model"
    if run.accelerator.is_main_process:
        run.export(final)
        logger.info("exported the EMA model to %s", final)
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    return final


def _train_steps(run: Run, batches, report: Report, stop: StopRequest) -> None:
    """Steps until train.max_steps, the time limit or a stop signal; each iteration reports, saves and draws
    what the step before it (if it ran in this invocation) calls for, then takes the next step."""
    cfg, accelerator = run.config.train, run.accelerator
    stepper = Stepper(run)
    first_step = run.state.step
    deadline = time.monotonic() + 60 * cfg.time_limit_minutes if cfg.time_limit_minutes > 0 else math.inf
    out_of_time = False
    while True:
        step = run.state.step
        done = step >= cfg.max_steps or out_of_time
        stepped = step > first_step  # the state is that of a step taken in this invocation
        if stepped and (step % cfg.log_every == 0 or done):
            report.write()
        saved = stepped and (step % cfg.checkpoint_every == 0 or done)
        if saved:
            _checkpoint(run)
        if (stepped or step == 0) and (step % cfg.sample_every == 0 or done):
            write_snapshot(run)
        if stop.signum is not None:
            accelerator.set_trigger()
        if accelerator.check_trigger():  # any process got SIGTERM/SIGINT: all save and stop together
            if stepped and not saved:
                _checkpoint(run)
            raise TrainingInterrupted(stop.signum or signal.SIGTERM, step)
        if out_of_time:
            logger.info("train.time_limit_minutes=%g reached at step %d", cfg.time_limit_minutes, step)
        if done:
            return
        report.add(stepper.step(batches))
        out_of_time = deadline < math.inf and bool(  # agreed by all processes: they stop at the same step
            accelerator.gather(torch.tensor([time.monotonic() >= deadline], device=run.device)).any())


def _checkpoint(run: Run) -> None:
    path = save_checkpoint(run.accelerator, run.output_dir, run.state, run.ema, run.export,
                           run.config.train.checkpoints_total_limit)
    logger.info("saved %s", path)
