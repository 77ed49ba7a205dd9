"""Fine-tuning: start a run from a trained Eidos model (train.init_from).

The source is an exported pipeline folder, a checkpoint folder, a run folder (its newest intact checkpoint, else
its final export) or a Hub id (downloaded with `huggingface_hub.snapshot_download`, then read as a pipeline
folder). Before any data is read, the source must match the new run: the same codec and text encoder (compared
weight by weight, so "minilm" and a path to the same MiniLM agree), and the same transformer shape. A different
resolution is allowed: the position embeddings are fixed 2D sin-cos functions of the token grid (not weights),
so the new model computes them for its own grid and every weight loads unchanged.

A checkpoint gives the trained weights and the EMA; an export (EMA weights only) gives both. The optimizer and
the step count start fresh. The run's config.yaml records the source under `started_from`; a rerun that resumes
from the run's own checkpoint does not read the source again (it may be gone by then).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from eidos.config import PATH_PREFIXES, STARTED_FROM, Config
from eidos.config.model_presets import preset_config
from eidos.encoders.codecs import downsample_factor, latent_channels
from eidos.model import MaskDiT
from eidos.sampling.pipeline import TRANSFORMER_WEIGHTS, is_pipeline_folder
from eidos.training.checkpoint import EMA_FILE, latest_checkpoint
from eidos.training.checkpoint_check import STATE_FILE, damage
from eidos.training.ema import EMA

logger = logging.getLogger(__name__)

CHECKPOINT_WEIGHTS = "model.safetensors"  # accelerate's save_state of the TrainingStep: keys "model.<name>"
# Which setting of the new run decides each transformer argument (the rest are model.<name> / model.preset).
SET_BY = {"in_channels": "encoders.codec", "text_dim": "encoders.text", "sample_size": "data.resolution"}


@dataclass
class InitSource:
    """A resolved train.init_from: `export` is a pipeline folder (transformer/, vae/, text_encoder/); `checkpoint`
    the checkpoint folder around it, when there is one (raw weights and EMA)."""

    reference: str
    export: Path
    checkpoint: Path | None = None
    hub: bool = False

    @property
    def step(self) -> int | None:
        if self.checkpoint is None:
            return None
        return int(json.loads((self.checkpoint / STATE_FILE).read_text())["step"])

    @property
    def weights_file(self) -> Path:
        return self.checkpoint / CHECKPOINT_WEIGHTS if self.checkpoint else self.export / TRANSFORMER_WEIGHTS

    def fail(self, problem: str) -> ValueError:
        return ValueError(f"train.init_from={self.reference!r}: {problem}")

    def check(self, config: Config, codec: nn.Module, text_encoder) -> None:
        """Refuse (one-line ValueError naming the mismatch) a source whose codec, text encoder or transformer shape
        differs from the run's; log how a resolution change is handled."""
        vae = _read_json(self.export / "vae" / "config.json")
        if vae.get("_class_name") != type(codec).__name__:
            raise self.fail(f"its codec is {vae.get('_class_name')}{self._hint('encoders.codec')}, this run's "
                            f"encoders.codec={config.encoders.codec!r} is {type(codec).__name__}; a fine-tune keeps "
                            "the source's codec")
        differing = _first_difference(self.export / "vae", codec)
        if differing:
            raise self.fail(f"its codec's weights differ from encoders.codec={config.encoders.codec!r} ({differing})"
                            f"{self._hint('encoders.codec')}; a fine-tune keeps the source's codec")
        differing = _first_difference(self.export / "text_encoder", text_encoder.model)
        if differing:
            raise self.fail(f"its text encoder differs from encoders.text={config.encoders.text!r} ({differing})"
                            f"{self._hint('encoders.text')}; a fine-tune keeps the source's text encoder")
        source = {k: v for k, v in _read_json(self.export / "transformer" / "config.json").items()
                  if not k.startswith("_")}
        wanted = expected_model_config(config, codec, text_encoder)
        shape = [f"{key}={source.get(key)!r} there, {value!r} here ({SET_BY.get(key, f'model.{key}')})"
                 for key, value in wanted.items() if key != "sample_size" and source.get(key) != value]
        if shape:
            raise self.fail(f"its transformer has another shape: {'; '.join(shape)}; a fine-tune keeps the source's "
                            f"shape: set these as in {self.export / 'transformer' / 'config.json'}")
        old, new = source["sample_size"], wanted["sample_size"]
        if old != new:
            patch = wanted["patch_size"]
            logger.info("train.init_from: the source was trained on %dx%d latents (%dx%d tokens), this run uses %dx%d "
                        "(%dx%d tokens): the fixed sin-cos position embeddings are computed for the new grid (integer "
                        "patch positions, so the source's positions keep their embeddings and the grid %s); no "
                        "weight depends on the resolution", old, old, old // patch, old // patch, new, new,
                        new // patch, new // patch, "extends" if new > old else "shrinks")

    def _hint(self, key: str) -> str:
        """' (trained with encoders.codec='pixels')' when the source's run config is at hand."""
        value = _source_run_config(self)
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return f" (trained with {key}={value!r})" if value is not None else ""

    def load_into(self, model: MaskDiT, ema: EMA) -> None:
        """The source's weights into `model` and its EMA into `ema` (created from `model` just before)."""
        if self.checkpoint is not None:
            raw = load_file(self.weights_file)
            state = {name.removeprefix("model."): tensor for name, tensor in raw.items()}
        else:
            state = MaskDiT.from_pretrained(self.export / "transformer").state_dict()
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise self.fail(f"{self.weights_file} does not hold this model's weights (missing {sorted(missing)[:3]}, "
                            f"unexpected {sorted(unexpected)[:3]})")
        if self.checkpoint is not None:
            ema.load_state_dict(load_file(self.checkpoint / EMA_FILE))
        else:
            ema.restart(model)  # an export holds the EMA weights: they are both
        logger.info("train.init_from: weights%s of %s%s; fresh optimizer, step 0", " and EMA" if self.checkpoint
                    else " (the exported EMA, also the EMA)", self.checkpoint or self.export,
                    f" (step {self.step})" if self.step is not None else "")

    def record(self) -> dict:
        """What config.yaml keeps under `started_from`."""
        return {"init_from": self.reference, "folder": str((self.checkpoint or self.export).resolve()),
                "kind": "hub" if self.hub else "checkpoint" if self.checkpoint else "export", "step": self.step,
                "weights": str(self.weights_file.resolve()), "weights_sha256": _sha256(self.weights_file)}


def resolve(reference: str) -> InitSource:
    """train.init_from -> the folders to read. Raises a one-line ValueError for anything else."""
    path = Path(reference).expanduser()
    if path.is_dir():
        return _local(reference, path)
    if reference.startswith(PATH_PREFIXES) or reference.count("/") != 1:
        raise ValueError(f"train.init_from={reference!r} is not an existing folder (an exported model, a checkpoint "
                         "or a run folder) nor a Hub id (org/name); fix the path")
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(reference))
    except Exception as error:  # noqa: BLE001 - offline, unknown repo, no access: all say the same to the user
        first = " ".join(str(error).split())[:200]
        raise ValueError(f"train.init_from={reference!r} is not a local folder and could not be fetched from the "
                         f"Hugging Face Hub ({type(error).__name__}: {first}); download it where the Hub is reachable "
                         f"(huggingface-cli download {reference} --local-dir DIR) and pass DIR") from None
    if not is_pipeline_folder(folder):
        raise ValueError(f"train.init_from={reference!r}: the Hub repo holds no model_index.json; it is not an "
                         "exported Eidos pipeline")
    return InitSource(reference, folder, hub=True)


def _local(reference: str, path: Path) -> InitSource:
    if (path / STATE_FILE).is_file():  # a checkpoint folder
        problems = damage(path)
        if problems:
            raise ValueError(f"train.init_from={reference!r} is a damaged checkpoint ({'; '.join(problems)})")
        return InitSource(reference, path / "model", checkpoint=path)
    if is_pipeline_folder(path):
        return InitSource(reference, path)
    checkpoint = latest_checkpoint(path)  # a run folder: its newest intact checkpoint, else its final export
    if checkpoint is not None and not damage(checkpoint):
        return InitSource(reference, checkpoint / "model", checkpoint=checkpoint)
    if is_pipeline_folder(path / "model"):
        return InitSource(reference, path / "model")
    raise ValueError(f"train.init_from={reference!r}: {path} is not an exported model (model_index.json), a checkpoint "
                     f"({STATE_FILE}) or a run folder with an intact checkpoint-<step>/ or model/")


def expected_model_config(config: Config, codec: nn.Module, text_encoder) -> dict:
    """The MaskDiT arguments this run builds (as the loop does), defaults included."""
    defaults = {name: p.default for name, p in inspect.signature(MaskDiT.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **preset_config(config.model.preset, in_channels=latent_channels(codec),
                                        sample_size=config.data.resolution // downsample_factor(codec),
                                        text_dim=text_encoder.dim, **config.model.overrides())}


def init_source(config: Config, resuming: bool) -> InitSource | None:
    """The source to start from, or None: no train.init_from, or the run resumes from its own checkpoint."""
    if not config.train.init_from or resuming:
        return None
    return resolve(config.train.init_from)


def run_config(config: Config, source: InitSource | None) -> dict:
    """What the run's config.yaml holds: the resolved config, plus `started_from` for a fine-tune (the source's
    record when it starts; the record an earlier start wrote when it resumes)."""
    saved = Path(config.train.output_dir) / "config.yaml"
    if source is not None:
        record = source.record()
    elif config.train.init_from and saved.is_file():
        record = (yaml.safe_load(saved.read_text()) or {}).get(STARTED_FROM)
    else:
        record = None
    return {**config.to_dict(), **({STARTED_FROM: record} if record else {})}


def _first_difference(folder: Path, module: nn.Module) -> str | None:
    """None if every tensor saved in `folder`'s safetensors files equals `module`'s; else what differs."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return f"no weights in {folder}"
    ours = module.state_dict()
    for file in files:
        with safe_open(file, "pt") as saved:
            for name in saved.keys():  # noqa: SIM118 - safe_open is not a mapping
                if name not in ours:
                    return f"{name} is not in this run's model"
                tensor = saved.get_tensor(name)
                if tensor.shape != ours[name].shape:
                    return f"{name} has shape {tuple(tensor.shape)} there, {tuple(ours[name].shape)} here"
                if not torch.equal(tensor, ours[name].detach().cpu().to(tensor.dtype)):
                    return f"{name} has other values"
    return None


def _source_run_config(source: InitSource) -> dict:
    """The config.yaml of the run the source came from, if it sits in one (else {})."""
    candidate = (source.checkpoint or source.export).parent / "config.yaml"
    try:
        loaded = yaml.safe_load(candidate.read_text()) if candidate.is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) and {"encoders", "train"} <= loaded.keys() else {}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"train.init_from: cannot read {path} ({error}); is it an Eidos export?") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
