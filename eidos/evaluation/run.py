"""Evaluate an exported model on its run's data: the held-out captions and the training images as the reference,
one image per held-out caption for each sampler setting (seed + i for the i-th caption), scored by `report`;
with images_per_prompt K, K such rounds (round r's i-th image from seed + r * N + i: round 0 is the K = 1 eval).

The real held-out images (through the codec) are scored the same way: what a generator that generalises
perfectly would score at this sample size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from eidos.config import Config
from eidos.data.sources import load_encoded_sets
from eidos.encoders import TextEncoder, decode
from eidos.encoders.pixels import to_uint8
from eidos.evaluation.features import load_feature_extractor
from eidos.evaluation.report import CaptionedImages, evaluate
from eidos.sampling import network_evaluations
from eidos.sampling.pipeline import EidosPipeline


@dataclass
class EvaluationSettings:
    """What `eidos eval` varies: sampler settings, sample sizes, seed, batch size, features and device."""

    consistency_steps: list[int]
    consistency_sigmas: list[float] | None = None  # one more consistency row, on this grid of noise levels
    flow_steps: list[int] | None = None  # one flow row per count; None: the config's sampling.flow_steps; [0]: none
    guidance_scale: float | None = None  # None: the config's sampling.guidance_scale
    max_prompts: int | None = None  # None: every held-out caption
    images_per_prompt: int = 1  # rounds of one image per caption, scored apart and averaged
    max_references: int = 10_000
    seed: int = 0
    batch_size: int = 64
    features: str = "pixels"
    inception_weights: str | None = None
    device: str = "cpu"


def evaluate_model(model_folder: Path, config: Config, settings: EvaluationSettings) -> list[dict]:
    """The report's rows (see `report.evaluate`) for the exported model in `model_folder` on `config`'s data."""
    pipeline = EidosPipeline.from_pretrained(model_folder).to(settings.device)
    pipeline.set_progress_bar_config(disable=True)
    text_encoder = TextEncoder(pipeline.text_encoder, pipeline.tokenizer, pipeline.config.text_pooling,
                               pipeline.config.text_max_length)
    train_set, held_out = load_encoded_sets(config, pipeline.vae, text_encoder)
    if held_out is None or len(held_out) < 2:
        raise ValueError("eval needs at least 2 held-out samples (data.held_out_files, or the OpenMoji split)")
    model = pipeline.transformer.config
    expected = ((model.in_channels, model.sample_size, model.sample_size), model.text_dim)
    if (held_out.latent_shape, held_out.text_dim) != expected:
        raise ValueError(f"the configured data has latents {held_out.latent_shape} and text dim "
                         f"{held_out.text_dim}, but {model_folder} was trained on {expected[0]} and {expected[1]}: "
                         "evaluate with the config of the model's own run")
    count = min(len(held_out), settings.max_prompts or len(held_out))
    prompts = captioned_images(pipeline, held_out, torch.arange(count), settings)
    generator = torch.Generator().manual_seed(settings.seed)
    chosen = torch.randperm(len(train_set), generator=generator)[: settings.max_references].sort().values
    reference = captioned_images(pipeline, train_set, chosen, settings)

    captions = prompts.captions * settings.images_per_prompt  # round after round: image p from seed + p
    samplers = sampler_settings(config, settings)
    generators = {name: (lambda s=setting: generate(pipeline, captions, *s, settings))
                  for name, setting in samplers.items()}
    extractor = load_feature_extractor(settings.features, settings.device, settings.inception_weights)
    rows = evaluate(generators, prompts, reference, extractor)
    for row in rows:  # what each sampler row costs, for tables that compare samplers at their cost
        if row["images"] in samplers:
            sampler, steps, guidance, _ = samplers[row["images"]]
            row |= {"sampler": sampler, "steps": steps, "nfe": network_evaluations(sampler, steps, guidance)}
    return rows


def sampler_settings(config: Config, settings: EvaluationSettings
                     ) -> dict[str, tuple[str, int, float, list[float] | None]]:
    """Row name -> (sampler, steps, guidance scale, sigmas): each consistency step count, the consistency sampler
    on `consistency_sigmas` if given, then flow Euler with CFG at each flow step count."""
    flow_steps = [config.sampling.flow_steps] if settings.flow_steps is None else settings.flow_steps
    guidance = config.sampling.guidance_scale if settings.guidance_scale is None else settings.guidance_scale
    rows = {f"consistency {steps_label(n)}": ("consistency", n, 1.0, None) for n in settings.consistency_steps}
    if settings.consistency_sigmas:
        sigmas = settings.consistency_sigmas
        rows[f"consistency at s = {', '.join(f'{s:g}' for s in sigmas)}"] = ("consistency", len(sigmas), 1.0, sigmas)
    for n in flow_steps:
        if n > 0:  # 0, from the config or the command line: no flow row
            rows[f"flow {steps_label(n)}, CFG {guidance:g}"] = ("flow", n, guidance, None)
    return rows


def steps_label(n: int) -> str:
    return f"{n} step{'s' * (n > 1)}"


def captioned_images(pipeline, encoded, indices: torch.Tensor, settings: EvaluationSettings) -> CaptionedImages:
    """Rows `indices` of an encoded set as images (the codec's decode of the posterior mean)."""
    rows = encoded.rows(indices)
    # uint8 on CPU: a quarter of the memory for the reference set (8 GB -> 2 GB at 10k x 256 px)
    images = [to_uint8(decode(pipeline.vae, chunk.float().to(settings.device))).cpu()
              for chunk in rows.latent_mean.split(settings.batch_size)]
    return CaptionedImages(torch.cat(images), rows.captions, rows.text.pooled.float())


@torch.no_grad()
def generate(pipeline, captions: list[str], sampler: str, steps: int, guidance: float, sigmas: list[float] | None,
             settings: EvaluationSettings) -> torch.Tensor:
    """One image per caption (N, 3, H, W) uint8, the i-th from seed + i, in batches."""
    images = []
    for start in range(0, len(captions), settings.batch_size):
        chunk = captions[start:start + settings.batch_size]
        generators = [torch.Generator(device=settings.device).manual_seed(settings.seed + start + i)
                      for i in range(len(chunk))]
        out = pipeline(chunk, num_inference_steps=steps, sampler=sampler, guidance_scale=guidance,
                       sigmas=sigmas, generator=generators, output_type="pt").images
        images.append(to_uint8(out).cpu())
    return torch.cat(images)
