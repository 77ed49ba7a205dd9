"""What a run shows while it trains: the status (loss parts and rates averaged over the steps since the last
report, to metrics.jsonl, the tracker and the progress bar) and the snapshots (sample grids of the EMA model)."""

from __future__ import annotations

import json
import logging
import time

from tqdm.auto import tqdm

from eidos.image_grids import pil_to_array
from eidos.training.previews import render_previews
from eidos.training.setup import Run
from eidos.training.step import StepResult

logger = logging.getLogger(__name__)


class Report:
    """The status of the steps since the last report, and the progress bar."""

    def __init__(self, run: Run):
        self.run = run
        self.window: dict[str, float] = {}
        self.window_steps, self.window_start = 0, time.perf_counter()
        self.last: StepResult | None = None
        self.loop_start = time.monotonic()
        self.progress = tqdm(total=run.config.train.max_steps, initial=run.state.step,
                             disable=not run.accelerator.is_main_process, desc="train", dynamic_ncols=True)

    def add(self, result: StepResult) -> None:
        for name, value in result.parts.items():
            self.window[name] = self.window.get(name, 0.0) + float(value)
        self.window["grad_norm"] = self.window.get("grad_norm", 0.0) + float(result.grad_norm)
        self.window_steps += 1
        self.last = result
        self.progress.update(1)

    def write(self) -> None:
        """Averages over the window, with the last step's learning rate and stage; then a new window."""
        run, last = self.run, self.last
        elapsed = time.perf_counter() - self.window_start
        logs = {f"loss/{k}" if k in last.parts else k: v / self.window_steps for k, v in self.window.items()}
        logs.update({"lr": last.lr, "samples_per_sec": self.window_steps * run.config.train.batch_size / elapsed,
                     "stage": last.stage, "skipped_steps": run.state.skipped_steps,
                     "train_minutes": (time.monotonic() - self.loop_start) / 60})  # in this invocation
        run.accelerator.log(logs, step=run.state.step)
        if run.accelerator.is_main_process:
            with open(run.output_dir / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps({"step": run.state.step, **logs}) + "\n")
        self.progress.set_postfix(loss=f"{logs['loss/total']:.3f}", fm=f"{logs['loss/fm']:.3f}",
                                  cm=f"{logs['loss/cm']:.3f}", mae=f"{logs['loss/mae']:.3f}",
                                  img_s=f"{logs['samples_per_sec']:.0f}")
        self.window, self.window_steps, self.window_start = {}, 0, time.perf_counter()

    def close(self) -> None:
        self.progress.close()


def write_snapshot(run: Run) -> None:
    """The sample grid of the EMA model at this step (main process). Grids are a view of the run, never a reason
    to lose it: a failure is logged and training goes on. The grid draws from generators of its own, so it never
    changes the training's random draws."""
    if not run.accelerator.is_main_process:
        return
    step = run.state.step
    run.ema.copy_to(run.ema_model)
    try:
        with run.autocast():
            grid = render_previews(run.ema_model, run.codec, run.previews, run.config.sampling, run.device)
        grid.save(run.output_dir / "samples" / f"step-{step:07d}.png")
    except (RuntimeError, ValueError, OSError) as error:
        logger.warning("step %d: sample grid failed, training goes on: %s: %s", step, type(error).__name__, error)
        return
    if run.config.train.tracker == "tensorboard":
        run.accelerator.get_tracker("tensorboard").log_images({"samples": pil_to_array(grid)[None]}, step,
                                                              dataformats="NHWC")
