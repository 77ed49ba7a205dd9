"""The training loop: one loop for every stage and data source, on HF accelerate.

Order of each iteration (after EDM2's training loop): pick the stage, set the learning rate, accumulate
gradients over micro-batches, clip, step (or skip a non-finite step), update the EMA, then log, draw sample
grids and checkpoint on their schedules. Every random draw of a step comes from a generator seeded by
(seed, rank, step, micro-batch) and the data order is a function of (seed, samples seen), so rerunning the
same command after a stop resumes the same run.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import signal
import time
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import nn
from tqdm.auto import tqdm

from eidos.config import Config, TrainConfig
from eidos.data.batch_order import Prefetcher, micro_batch_start
from eidos.data.sources import cache_files
from eidos.data.streamed_shards import shard_urls
from eidos.data.training_data import open_training_data
from eidos.encoders import load_codec, load_text_encoder
from eidos.image_grids import pil_to_array
from eidos.model import MaskDiT
from eidos.objectives import FACMObjective
from eidos.sampling.pipeline import EidosPipeline, save_pipeline
from eidos.training.checkpoint import TrainerState, latest_checkpoint, load_checkpoint, save_checkpoint
from eidos.training.ema import EMA
from eidos.training.faults import NonFiniteTraining, StopRequest, TrainingInterrupted
from eidos.training.init_from import init_source, run_config
from eidos.training.previews import build_preview_set, render_previews
from eidos.training.run_folder import check_run_folder
from eidos.training.teacher import frozen_teacher

logger = logging.getLogger(__name__)


class TrainingStep(nn.Module):
    """The whole objective as one module forward. FACM calls the network two or three times per step (flow
    branch, unconditional pass, JVP); wrapped in DDP as one forward, DDP sees one forward per backward and
    finds every parameter any of those calls used."""

    def __init__(self, model: MaskDiT):
        super().__init__()
        self.model = model

    def forward(self, objective: FACMObjective, batch, generator: torch.Generator):
        return objective(self.model, batch, generator)


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


def _autocast(config: Config, device: torch.device):
    if config.train.mixed_precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if config.train.mixed_precision == "fp16":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def train(config: Config) -> Path:
    """Train (or resume) the run in config.train.output_dir; returns the folder of the final exported model."""
    cfg = config.train
    output_dir = Path(cfg.output_dir)
    check_run_folder(output_dir, config.to_dict())  # before any work: never write into a folder that isn't ours
    checkpoint = latest_checkpoint(output_dir)
    source = init_source(config, resuming=checkpoint is not None)  # a fine-tune's start (not read on resume)
    tracker = None if cfg.tracker == "none" else cfg.tracker
    # cpu=True on a machine without CUDA: accelerate then runs `torchrun --nproc_per_node N` as gloo DDP
    # (without it every CPU process believed it was alone).
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), log_with=tracker,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir)),
        # Which parameters a step uses varies (mask token only when masking, null text only for dropped text).
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    micro_batch = micro_batch_size(cfg, world)
    if device.type == "cuda" and cfg.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # Inputs first, cheapest checks first: cache files, then the encoders (the text encoder is kept for exports),
    # then the OpenMoji cache, which the main process builds once while the others wait.
    if config.data.source == "shards":  # a glob that matches nothing fails here, before the encoders load
        shard_urls(config.data.train_files)
    if config.data.source != "openmoji":
        cache_files(config.data)
    codec = load_codec(config.encoders.codec)
    text_encoder = load_text_encoder(config.encoders.text, config.encoders.text_max_length)
    if source is not None:  # before the data: a mismatch costs no encoding
        source.check(config, codec, text_encoder)
    data = open_training_data(config, codec, text_encoder, rank, accelerator.main_process_first)
    if config.data.source == "shards":  # encoded on the fly, on the training device
        codec, text_encoder.model = codec.to(device), text_encoder.model.to(device)
    prefetcher = Prefetcher(data.read, ahead=data.read_ahead)

    def next_micro_batch_start(samples_seen: int, micro: int) -> int:
        """Where this process reads after micro-batch `micro` of the step that starts at samples_seen."""
        if micro + 1 < cfg.grad_accumulation_steps:
            return micro_batch_start(samples_seen, micro + 1, rank, world, micro_batch)
        return micro_batch_start(samples_seen + cfg.batch_size, 0, rank, world, micro_batch)
    latent_shape = data.latent_shape

    set_seed(cfg.seed)  # the initial weights are a function of the seed (and the same on every process)
    model = MaskDiT.from_preset(
        config.model.preset, in_channels=latent_shape[0], sample_size=latent_shape[1],
        text_dim=data.text_dim, **config.model.overrides(),
    )
    patch_size = model.config.patch_size
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    ema = EMA(model, cfg.ema_decay, cfg.ema_warmup)
    if source is not None:
        source.load_into(model, ema)
    ema_model = copy.deepcopy(model).eval().requires_grad_(False).to(device)
    if cfg.compile:  # after the copy: a compiled block's deepcopy would still call the original block
        model.compile_blocks()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.stages[0].learning_rate, betas=cfg.adam_betas, weight_decay=cfg.weight_decay,
        fused=device.type == "cuda",
    )
    step_module, optimizer = accelerator.prepare(TrainingStep(model), optimizer)
    codec = codec.to(device)
    for name in ema.shadow:
        ema.shadow[name] = ema.shadow[name].to(device)

    state = TrainerState()
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint, ema)
        logger.info("resumed from %s at step %d", checkpoint, state.step)

    def export(folder: Path) -> None:
        """The EMA model as a full `EidosPipeline` folder."""
        ema.copy_to(ema_model)
        pipeline = EidosPipeline(
            transformer=ema_model, vae=codec, text_encoder=text_encoder.model, tokenizer=text_encoder.tokenizer,
            scheduler=FlowMatchEulerDiscreteScheduler(), text_pooling=text_encoder.pooling,
            text_max_length=text_encoder.max_length,
        )
        save_pipeline(pipeline, folder)

    previews = build_preview_set(config.sampling, data.preview_rows, data.held_out, latent_shape,
                                 text_encoder.encode)
    autocast = _autocast(config, device)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(run_config(config, source), sort_keys=False))
        (output_dir / "samples").mkdir(exist_ok=True)
        logger.info("model: %.2fM parameters; %s training images, %d held out; micro-batch %d on %d process(es)",
                    sum(p.numel() for p in model.parameters()) / 1e6, data.num_samples or "a stream of",
                    len(data.held_out) if data.held_out else 0, micro_batch, world)
    if tracker is not None:
        accelerator.init_trackers("eidos", config=_flat(config.to_dict()))

    def write_previews() -> None:
        """Sample grids are a view of the run, never a reason to lose it: a failure is logged and training goes on."""
        if not accelerator.is_main_process:
            return
        ema.copy_to(ema_model)
        try:
            with autocast:
                grid = render_previews(ema_model, codec, previews, config.sampling, device)
            grid.save(output_dir / "samples" / f"step-{state.step:07d}.png")
        except (RuntimeError, ValueError, OSError) as error:
            logger.warning("step %d: sample grid failed, training goes on: %s: %s", state.step,
                           type(error).__name__, error)
            return
        if cfg.tracker == "tensorboard":
            accelerator.get_tracker("tensorboard").log_images({"samples": pil_to_array(grid)[None]}, state.step,
                                                              dataformats="NHWC")

    def checkpoint_now() -> None:
        path = save_checkpoint(accelerator, output_dir, state, ema, export, cfg.checkpoints_total_limit)
        logger.info("saved %s", path)

    progress = tqdm(total=cfg.max_steps, initial=state.step, disable=not accelerator.is_main_process,
                    desc="train", dynamic_ncols=True)
    stop = StopRequest()
    consecutive_skips = 0
    stage_index, objective = -1, None
    window: dict[str, float] = {}
    window_steps, window_start = 0, time.perf_counter()
    loop_start = time.monotonic()
    deadline = loop_start + 60 * cfg.time_limit_minutes if cfg.time_limit_minutes > 0 else math.inf
    try:
        while state.step < cfg.max_steps:
            index, lr = learning_rate(config, state.step)
            if index != stage_index:
                stage = cfg.stages[index]
                start = stage_start(config, index)
                teacher = None
                if stage.consistency and config.objective.consistency_teacher == "frozen":
                    teacher = frozen_teacher(accelerator, output_dir, start, state.step, ema, ema_model)
                objective = FACMObjective(config.objective, patch_size=patch_size, mask_ratio=stage.mask_ratio,
                                          consistency=stage.consistency, teacher=teacher)
                entering = state.step == start and state.step > 0
                if stage.reset_optimizer and entering:
                    optimizer.state.clear()  # a fresh optimizer for this stage (DESIGN §3)
                if stage.restart_ema and entering:  # after the teacher took the EMA weights of this moment
                    ema.restart(model)
                stage_index = index
                ema_origin = ema_start(config, index)  # once per stage, not every step
                logger.info("stage %r from step %d: mask ratio %.2f, %s", stage.name, state.step, stage.mask_ratio,
                            "consistency" if stage.consistency else "flow (both branches)")
            for group in optimizer.param_groups:
                group["lr"] = lr

            parts_sum: dict[str, torch.Tensor] = {}
            for micro in range(cfg.grad_accumulation_steps):
                start = micro_batch_start(state.samples_seen, micro, rank, world, micro_batch)
                rows = prefetcher.get(start, micro_batch, next_micro_batch_start(state.samples_seen, micro))
                batch_in = data.encode(rows, device)
                generator = torch.Generator(device=device).manual_seed(step_seed(cfg.seed, rank, state.step, micro))
                last = micro == cfg.grad_accumulation_steps - 1
                sync = contextlib.nullcontext() if last else accelerator.no_sync(step_module)
                with sync:
                    with autocast:
                        loss, parts = step_module(objective, batch_in.sample(generator), generator)
                    accelerator.backward(loss / cfg.grad_accumulation_steps)
                for name, value in parts.items():
                    parts_sum[name] = parts_sum.get(name, 0) + value / cfg.grad_accumulation_steps
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            grad_norm = accelerator.clip_grad_norm_(step_module.parameters(), max_norm)
            if torch.isfinite(grad_norm):  # all-reduced gradients: every process takes the same branch
                optimizer.step()
                ema.update(model, state.step - ema_origin)
                consecutive_skips = 0
            else:
                state.skipped_steps += 1
                consecutive_skips += 1
                parts_text = {k: round(float(v), 4) for k, v in parts_sum.items()}
                logger.warning("step %d: non-finite loss or gradient, step skipped (%s)", state.step, parts_text)
                if consecutive_skips >= cfg.max_consecutive_skips:
                    raise NonFiniteTraining(
                        f"stopped at step {state.step}: {consecutive_skips} consecutive non-finite steps (loss parts "
                        f"{parts_text}); last good checkpoint: {latest_checkpoint(output_dir) or 'none'}. Lower the "
                        f"learning rate, turn mixed precision off or use objective.tangent=finite_difference"
                    )
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.samples_seen += cfg.batch_size
            out_of_time = deadline < math.inf and bool(  # agreed by all processes: they stop at the same step
                accelerator.gather(torch.tensor([time.monotonic() >= deadline], device=device)).any())

            for name, value in parts_sum.items():
                window[name] = window.get(name, 0.0) + float(value)
            window["grad_norm"] = window.get("grad_norm", 0.0) + float(grad_norm)
            window_steps += 1
            if state.step % cfg.log_every == 0 or state.step == cfg.max_steps or out_of_time:
                elapsed = time.perf_counter() - window_start
                logs = {f"loss/{k}" if k in parts_sum else k: v / window_steps for k, v in window.items()}
                logs.update({"lr": lr, "samples_per_sec": window_steps * cfg.batch_size / elapsed,
                             "stage": stage_index, "skipped_steps": state.skipped_steps,
                             "train_minutes": (time.monotonic() - loop_start) / 60})  # in this invocation
                accelerator.log(logs, step=state.step)
                if accelerator.is_main_process:
                    with open(output_dir / "metrics.jsonl", "a") as handle:
                        handle.write(json.dumps({"step": state.step, **logs}) + "\n")
                progress.set_postfix(loss=f"{logs['loss/total']:.3f}", fm=f"{logs['loss/fm']:.3f}",
                                     cm=f"{logs['loss/cm']:.3f}", mae=f"{logs['loss/mae']:.3f}",
                                     img_s=f"{logs['samples_per_sec']:.0f}")
                window, window_steps, window_start = {}, 0, time.perf_counter()
            progress.update(1)
            last_step = state.step == cfg.max_steps or out_of_time
            saved = state.step % cfg.checkpoint_every == 0 or last_step
            if saved:  # before the previews: the step's work is safe whatever drawing them does
                checkpoint_now()
            if state.step % cfg.sample_every == 0 or last_step:
                write_previews()
            if stop.signum is not None:
                accelerator.set_trigger()
            if accelerator.check_trigger():  # any process got SIGTERM/SIGINT: all save and stop together
                if not saved:
                    checkpoint_now()
                raise TrainingInterrupted(stop.signum or signal.SIGTERM, state.step)
            if out_of_time:
                logger.info("train.time_limit_minutes=%g reached at step %d", cfg.time_limit_minutes, state.step)
                break

    finally:
        stop.restore()
        prefetcher.close()
        if data.skipped:
            logger.warning("process %d skipped bad shard samples: %s", rank, dict(data.skipped))
    progress.close()
    final = output_dir / "model"
    if accelerator.is_main_process:
        export(final)
        logger.info("exported the EMA model to %s", final)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final


def _flat(tree: dict, prefix: str = "") -> dict:
    """Nested config -> flat {"train.lr": ...} with tracker-friendly scalar values."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, name + "."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
