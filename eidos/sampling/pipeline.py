"""`EidosPipeline`: prompt -> images, as a diffusers `DiffusionPipeline`.

    pipe = EidosPipeline.from_pretrained("runs/openmoji/model")
    image = pipe("red apple", num_inference_steps=1).images[0]

Components: `transformer` (MaskDiT), `vae` (the pixel codec, or a diffusers `AutoencoderKL`), `text_encoder` and
`tokenizer` (transformers; MiniLM or CLIP) and `scheduler` (`FlowMatchEulerDiscreteScheduler`: it sets the flow
sampler's time grid, sigma = s, with its shift if configured; the step is the Euler step of
`sample_flow_euler`). `model_index.json` records our classes as `["eidos", "MaskDiT"]`, so
`EidosPipeline.from_pretrained(dir)` loads offline with no remote code.
"""

from __future__ import annotations

import json
import math
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ImagePipelineOutput
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from diffusers.utils.torch_utils import randn_tensor

from eidos.batch import TextEmbeddings
from eidos.encoders.codecs import decode, downsample_factor
from eidos.encoders.text import encode_captions
from eidos.model import MaskDiT
from eidos.sampling.solvers import check_sigmas, flow_times, sample_consistency, sample_flow_euler

# Where an exported pipeline keeps the transformer's weights (diffusers' layout).
TRANSFORMER_WEIGHTS = Path("transformer") / SAFETENSORS_WEIGHTS_NAME

SAMPLERS = ("consistency", "flow")
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class EidosPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->transformer->vae"

    def __init__(self, transformer: MaskDiT, vae, text_encoder, tokenizer,
                 scheduler: FlowMatchEulerDiscreteScheduler, text_pooling: str = "mean", text_max_length: int = 16):
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              scheduler=scheduler)
        self.register_to_config(text_pooling=text_pooling, text_max_length=text_max_length)

    def encode_prompt(self, prompts: list[str]) -> TextEmbeddings:
        """Text embeddings of `prompts`; an empty prompt is the unconditional one (the model's null text)."""
        text = encode_captions(self.text_encoder, self.tokenizer, prompts, self.config.text_max_length,
                               self.config.text_pooling)
        text.drop = torch.tensor([p == "" for p in prompts], device=text.pooled.device)
        return text

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, 3, H, W) images in [0, 1]."""
        return decode(self.vae, latents)

    def check_inputs(self, prompts, negative_prompt, num_inference_steps, sampler, guidance_scale,
                     num_images, generator, latents, height, width, output_type) -> None:
        if not prompts:
            raise ValueError("`prompt` is an empty list; pass at least one prompt (\"\" is the unconditional one)")
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"`prompt` must be a string or a list of strings, got {prompts!r}")
        if num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be >= 1, got {num_inference_steps}")
        if sampler not in SAMPLERS:
            raise ValueError(f"`sampler` must be one of {SAMPLERS}, got {sampler!r}")
        if not math.isfinite(guidance_scale) or guidance_scale < 1:
            raise ValueError(f"`guidance_scale` must be >= 1 (1 = no guidance), got {guidance_scale}")
        if sampler == "consistency" and (negative_prompt is not None or guidance_scale != 1):
            raise ValueError("`negative_prompt` and `guidance_scale` apply to sampler='flow'; the consistency "
                             "sampler has guidance baked in by training")
        if num_images < 1:
            raise ValueError(f"`num_images_per_prompt` must be >= 1, got {num_images}")
        batch = len(prompts) * num_images
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for {batch} images (prompts x num_images_per_prompt)")
        if isinstance(negative_prompt, list) and len(negative_prompt) != len(prompts):
            raise ValueError(f"got {len(negative_prompt)} negative prompts for {len(prompts)} prompts")
        side = self.transformer.config.sample_size * self.vae_scale_factor
        for name, value in (("height", height), ("width", width)):
            if value is not None and value != side:
                raise ValueError(f"`{name}`={value} is not supported: this model generates {side}x{side} images")
        shape = (batch, *self.latent_shape)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}")

    @property
    def vae_scale_factor(self) -> int:
        return downsample_factor(self.vae)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        config = self.transformer.config
        return (config.in_channels, config.sample_size, config.sample_size)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 1,
        sampler: str = "consistency",
        guidance_scale: float = 1.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        sigmas: list[float] | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Generate images.

        sampler "consistency" (default; 1, 2 or N steps, guidance baked in by training) or "flow" (Euler with
        this pipeline's FlowMatchEulerDiscreteScheduler, optional classifier-free guidance with
        `guidance_scale` > 1 and `negative_prompt`). A list of generators, one per image, makes every image
        reproducible on its own. output_type: "pil", "np" ((B, H, W, 3) floats in [0, 1]), "pt"
        ((B, 3, H, W)) or "latent". `sigmas` (as in diffusers' flow pipelines): the noise levels s to step from,
        strictly decreasing from at most 1; it sets the number of steps (num_inference_steps is then unused). The
        consistency sampler jumps from each (default 1, 1 - 1/N, ..., 1/N); the flow sampler's scheduler takes
        them as its grid before the final 0 (its shift, if configured, applies to them).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        self.check_inputs(prompts, negative_prompt, num_inference_steps, sampler, guidance_scale,
                          num_images_per_prompt, generator, latents, height, width, output_type)
        grid = None if sigmas is None else check_sigmas(sigmas)  # validated once, as floats
        device = self._execution_device
        text = self.encode_prompt(prompts).repeat_interleave(num_images_per_prompt).to(device)
        batch = len(text)
        if latents is None:
            latents = randn_tensor((batch, *self.latent_shape), generator=generator, device=device,
                                   dtype=torch.float32)
        latents = latents.to(device)

        if sampler == "consistency":
            latents = sample_consistency(self.transformer, latents, text, num_steps=num_inference_steps,
                                         times=grid, generator=generator)
        else:
            negative_text = None
            if negative_prompt is not None:
                negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else negative_prompt
                negative_text = self.encode_prompt(negatives).repeat_interleave(num_images_per_prompt).to(device)
            latents = self.flow_sample(latents, text, num_inference_steps, guidance_scale, negative_text, grid)

        if output_type == "latent":
            images = latents
        else:
            images = self.decode_latents(latents)
            if output_type in ("np", "pil"):
                images = images.permute(0, 2, 3, 1).float().cpu().numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images.astype(np.float32))
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    def flow_sample(self, latents, text, num_steps, guidance_scale, negative_text, sigmas=None) -> torch.Tensor:
        """`sample_flow_euler` on the scheduler's grid: `sigmas` (checked floats), or the uniform s = 1, 1 - 1/N,
        ..., 1/N; then the scheduler's shift, and the final 0."""
        grid = flow_times(num_steps)[:-1] if sigmas is None else sigmas
        self.scheduler.set_timesteps(sigmas=grid, device=latents.device)
        times = [float(s) for s in self.scheduler.sigmas]  # the scheduler appends the final 0
        return sample_flow_euler(self.transformer, latents.float(), text, len(grid), guidance_scale, negative_text,
                                 times=times, progress=self.progress_bar)


def save_pipeline(pipeline: EidosPipeline, folder: str | Path) -> None:
    """`save_pretrained` into a new hidden sibling, then renamed into place: a crash never leaves half an export.

    `folder` may be missing, empty or an earlier eidos export, which is replaced; anything else is refused
    (`check_export_folder`) and left untouched.
    """
    folder = Path(folder)
    check_export_folder(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_sibling(folder, "tmp")
    try:
        pipeline.save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if folder.exists():
        old = _new_sibling(folder, "old")
        folder.rename(old)  # onto the empty `old` folder: a rename, so `folder` is never half-written
    tmp.rename(folder)
    if old is not None:
        shutil.rmtree(old)


def check_export_folder(folder: Path, name: str = "export folder") -> None:
    """Refuse (ValueError) to write an export into `folder` unless it is missing, empty or an eidos export;
    `name` is how the message calls it (e.g. "--out")."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{name} {folder} is a file, not a folder; choose another folder")
    if folder.is_dir() and any(folder.iterdir()) and not is_eidos_export(folder):
        raise ValueError(f"{name} {folder} is not empty and is not an eidos export (no model_index.json naming "
                         f"{EidosPipeline.__name__}); not replacing it: choose a new or empty folder")


def is_eidos_export(folder: str | Path) -> bool:
    """Whether `folder` holds a pipeline eidos wrote: its model_index.json names EidosPipeline."""
    try:
        index = json.loads((Path(folder) / "model_index.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(index, dict) and index.get("_class_name") == EidosPipeline.__name__


def _new_sibling(folder: Path, label: str) -> Path:
    """A new, empty hidden folder next to `folder` (a name nobody else uses)."""
    path = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.{label}")
    path.mkdir()
    return path


def is_pipeline_folder(folder: str | Path) -> bool:
    return (Path(folder) / "model_index.json").exists()
