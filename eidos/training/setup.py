"""Everything a training run holds, built once before the first step (`set_up`), cheapest checks first: the run
folder, the data files, the encoders (and a fine-tune's source against them), the data, then the model, its EMA
and optimizer, and the state of a run being resumed."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import nn

from eidos.config import Config
from eidos.data.batch_order import BatchLayout
from eidos.data.sources import find_files
from eidos.data.training_data import TrainingData, open_training_data
from eidos.encoders import load_codec, load_text_encoder
from eidos.encoders.text import TextEncoder
from eidos.model import MaskDiT
from eidos.sampling.pipeline import EidosPipeline, save_pipeline
from eidos.training.checkpoint import TrainerState, latest_checkpoint, load_checkpoint
from eidos.training.ema import EMA
from eidos.training.init_from import InitSource, init_source, run_config
from eidos.training.optimizer import MuonWithAdamW, build_optimizer
from eidos.training.precision import autocast, resolve_precision
from eidos.training.previews import PreviewSet, build_preview_set
from eidos.training.run_folder import check_run_folder
from eidos.training.schedule import micro_batch_size

logger = logging.getLogger(__name__)


class TrainingStep(nn.Module):
    """The whole objective as one module forward. FACM calls the network two or three times per step (flow
    branch, unconditional pass, JVP); wrapped in DDP as one forward, DDP sees one forward per backward and
    finds every parameter any of those calls used."""

    def __init__(self, model: MaskDiT):
        super().__init__()
        self.model = model

    def forward(self, objective, batch, generator: torch.Generator):
        return objective(self.model, batch, generator)


@dataclass
class Run:
    """A run being trained: its config and folder, data and encoders, the model (wrapped for the step), its EMA
    (and a model holding the EMA weights, for previews, teachers and exports), the optimizer and the state."""

    config: Config
    output_dir: Path
    accelerator: Accelerator
    layout: BatchLayout
    data: TrainingData
    codec: nn.Module
    text_encoder: TextEncoder
    model: MaskDiT
    step_module: nn.Module
    ema: EMA
    ema_model: MaskDiT
    optimizer: torch.optim.Optimizer
    previews: PreviewSet
    state: TrainerState

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def autocast(self):
        """Autocast in the precision this run trains in (`train.mixed_precision`, "auto" resolved)."""
        return autocast(self.state.mixed_precision, self.device)

    def export(self, folder: Path) -> None:
        """The EMA model as a full `EidosPipeline` folder."""
        self.ema.copy_to(self.ema_model)
        pipeline = EidosPipeline(
            transformer=self.ema_model, vae=self.codec, text_encoder=self.text_encoder.model,
            tokenizer=self.text_encoder.tokenizer, scheduler=FlowMatchEulerDiscreteScheduler(),
            text_pooling=self.text_encoder.pooling, text_max_length=self.text_encoder.max_length,
        )
        save_pipeline(pipeline, folder)


def set_up(config: Config) -> Run:
    """Check, load and build everything the run needs; resume its state when its folder holds a checkpoint."""
    cfg = config.train
    output_dir = Path(cfg.output_dir)
    check_run_folder(output_dir, config.to_dict())  # before any work: never write into a folder that isn't ours
    checkpoint = latest_checkpoint(output_dir)
    source = init_source(config, resuming=checkpoint is not None)  # a fine-tune's start (not read on resume)
    accelerator = _accelerator(config, output_dir)
    device = accelerator.device
    layout = BatchLayout(cfg.batch_size, cfg.grad_accumulation_steps, accelerator.process_index,
                         accelerator.num_processes)
    micro_batch_size(cfg, layout.world)  # refuses a batch that does not split evenly
    files = find_files(config.data)  # a glob that matches nothing fails here, before the encoders load
    codec = load_codec(config.encoders.codec)
    text_encoder = load_text_encoder(config.encoders.text, config.encoders.text_max_length)  # kept for exports
    if source is not None:  # before the data: a mismatch costs no encoding
        source.check(config, codec, text_encoder)
    data = open_training_data(config, files, codec, text_encoder, layout.rank, device,
                              accelerator.main_process_first)  # the main process builds the OpenMoji cache once
    model, ema, ema_model = _model(config, data, source, device)
    built = build_optimizer(model, cfg, device)
    step_module, optimizer = accelerator.prepare(TrainingStep(model), built)
    state = TrainerState()
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint, ema)
        logger.info("resumed from %s at step %d", checkpoint, state.step)
    state.mixed_precision = resolve_precision(cfg.mixed_precision, state.mixed_precision, accelerator)
    if isinstance(built, MuonWithAdamW):
        built.compute_in(state.mixed_precision)
    previews = build_preview_set(config.sampling, data.preview_rows, data.held_out, data.latent_shape,
                                 text_encoder.encode)
    run = Run(config, output_dir, accelerator, layout, data, codec.to(device), text_encoder, model, step_module, ema,
              ema_model, optimizer, previews, state)
    _write_run_files(run, source)
    return run


def _accelerator(config: Config, output_dir: Path) -> Accelerator:
    tracker = None if config.train.tracker == "none" else config.train.tracker
    # cpu=True on a machine without CUDA: accelerate then runs `torchrun --nproc_per_node N` as gloo DDP
    # (without it every CPU process believed it was alone).
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), log_with=tracker,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir)),
        # Which parameters a step uses varies (mask token only when masking, null text only for dropped text).
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if accelerator.device.type == "cuda" and config.train.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator


def _model(config: Config, data: TrainingData, source: InitSource | None,
           device: torch.device) -> tuple[MaskDiT, EMA, MaskDiT]:
    """(model, its EMA on `device`, a frozen model to hold the EMA weights on `device`)."""
    cfg = config.train
    set_seed(cfg.seed)  # the initial weights are a function of the seed (and the same on every process)
    model = MaskDiT.from_preset(
        config.model.preset, in_channels=data.latent_shape[0], sample_size=data.latent_shape[1],
        text_dim=data.text_dim, **config.model.overrides(),
    )
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    ema = EMA(model, cfg.ema_decay, cfg.ema_warmup)
    if source is not None:
        source.load_into(model, ema)
    ema_model = copy.deepcopy(model).eval().requires_grad_(False).to(device)
    if cfg.compile:  # after the copy: a compiled block's deepcopy would still call the original block
        model.compile_blocks()
    return model, ema.to(device), ema_model


def _write_run_files(run: Run, source: InitSource | None) -> None:
    """The resolved config (and a fine-tune's source) and the samples folder; the tracker's first record."""
    config, accelerator = run.config, run.accelerator
    if accelerator.is_main_process:
        run.output_dir.mkdir(parents=True, exist_ok=True)
        (run.output_dir / "config.yaml").write_text(yaml.safe_dump(run_config(config, source), sort_keys=False))
        (run.output_dir / "samples").mkdir(exist_ok=True)
        logger.info("model: %.2fM parameters; %s training images, %d held out; micro-batch %d on %d process(es)",
                    sum(p.numel() for p in run.model.parameters()) / 1e6, run.data.num_samples or "a stream of",
                    len(run.data.held_out) if run.data.held_out else 0, run.layout.micro_batch, run.layout.world)
    if config.train.tracker != "none":
        accelerator.init_trackers("eidos", config=_flat(config.to_dict()))


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
