"""What the config decides for each optimizer step, as pure functions: the batch split, the stage, the learning
rate, where the EMA last restarted, and the seed of every random draw (from (seed, rank, step, micro-batch), so a
resumed run draws what an unbroken one would)."""

from __future__ import annotations

import hashlib
import math

from eidos.config import Config, TrainConfig


def micro_batch_size(cfg: TrainConfig, world: int) -> int:
    """Samples per process per micro-batch; the global batch must split evenly."""
    parts = world * cfg.grad_accumulation_steps
    if cfg.batch_size % parts != 0:
        raise ValueError(
            f"train.batch_size={cfg.batch_size} must be divisible by processes ({world}) x "
            f"train.grad_accumulation_steps ({cfg.grad_accumulation_steps}); e.g. use "
            f"train.batch_size={max(1, cfg.batch_size // parts) * parts}"
        )
    return cfg.batch_size // parts


def step_seed(seed: int, rank: int, step: int, micro: int) -> int:
    digest = hashlib.sha256(f"{seed}/{rank}/{step}/{micro}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def learning_rate(config: Config, step: int) -> tuple[int, float]:
    """(stage index, learning rate) at optimizer step `step`: one linear warm-up at the start of the run (a
    warm-up per stage spent much of a short stage at a reduced rate), then per stage constant or cosine decay
    to 10% over the stage."""
    start = 0
    warmup = min(1.0, (step + 1) / config.train.warmup_steps) if config.train.warmup_steps else 1.0
    for index, (stage, length) in enumerate(zip(config.train.stages, config.train.stage_steps(), strict=True)):
        if step < start + length or index == len(config.train.stages) - 1:
            into = step - start
            decay = 1.0
            if config.train.lr_schedule == "cosine":
                decay = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, into / max(1, length))))
            return index, stage.learning_rate * warmup * decay
        start += length
    raise AssertionError("unreachable")


def stage_start(config: Config, index: int) -> int:
    return sum(config.train.stage_steps()[:index])


def ema_start(config: Config, index: int) -> int:
    """The step the EMA last (re)started at, for a step in stage `index`: the start of the latest stage up to it
    with restart_ema (0 if none). A function of the config alone, so a resumed run agrees."""
    starts = [stage_start(config, i) for i in range(index + 1) if config.train.stages[i].restart_ema]
    return max(starts, default=0)
