"""Sample grids while training: fixed prompts and fixed noise, so grids from different steps compare.

Rows are prompts (held-out captions first, then training captions, or the configured prompts); columns are the
reference image (when the prompt comes from the data), consistency sampling at each configured step count,
and flow Euler sampling.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from PIL import Image

from eidos.batch import TextEmbeddings
from eidos.config import SamplingConfig
from eidos.data.cache import EncodedSet
from eidos.encoders.codecs import decode
from eidos.image_grids import labelled_grid, to_pil
from eidos.sampling import sample_consistency, sample_flow_euler


@dataclass
class PreviewSet:
    captions: list[str]
    text: TextEmbeddings
    references: torch.Tensor | None  # (P, C, h, w) latents of the real images, when prompts come from data
    noise: torch.Tensor  # (P, C, h, w), fixed for the whole run


def _pick(data: EncodedSet, count: int, rng: random.Random) -> list[int]:
    return sorted(rng.sample(range(len(data)), min(count, len(data))))


def build_preview_set(
    config: SamplingConfig, train: EncodedSet, held_out: EncodedSet | None, latent_shape: tuple[int, ...],
    encode_text,
) -> PreviewSet:
    """Fixed prompts and noise. `encode_text(captions)` is called only for configured prompts."""
    generator = torch.Generator().manual_seed(config.seed)
    if config.prompts:
        text = encode_text(list(config.prompts))
        noise = torch.randn(len(config.prompts), *latent_shape, generator=generator)
        return PreviewSet(list(config.prompts), text, None, noise)
    rng = random.Random(config.seed)
    held_out = held_out if held_out is not None else train
    count = config.num_held_out_prompts if held_out is not train else 0
    held = held_out.rows(torch.tensor(_pick(held_out, count, rng), dtype=torch.long))
    seen = train.rows(torch.tensor(_pick(train, config.num_train_prompts, rng), dtype=torch.long))
    captions = [caption + " *" for caption in held.captions] + seen.captions
    text = TextEmbeddings.cat([held.text, seen.text])
    references = torch.cat([held.latent_mean, seen.latent_mean]).float()
    noise = torch.randn(len(captions), *latent_shape, generator=generator)
    return PreviewSet(captions, text, references, noise)


@torch.no_grad()
def render_previews(model, codec, previews: PreviewSet, config: SamplingConfig, device) -> Image.Image:
    """One labelled grid; held-out prompts are marked with '*'."""
    text = previews.text.to(device)
    noise = previews.noise.to(device)
    columns: dict[str, list[Image.Image]] = {}
    if previews.references is not None:
        columns["data"] = to_pil(decode(codec, previews.references.to(device)))
    for steps in config.consistency_steps:
        generator = torch.Generator(device=device).manual_seed(config.seed)
        latents = sample_consistency(model, noise, text, num_steps=steps, generator=generator)
        columns[f"{steps}-step"] = to_pil(decode(codec, latents))
    if config.flow_steps > 0:
        latents = sample_flow_euler(model, noise, text, config.flow_steps, config.guidance_scale)
        columns[f"flow {config.flow_steps}"] = to_pil(decode(codec, latents))
    return labelled_grid(columns, previews.captions)
