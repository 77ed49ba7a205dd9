"""Score image sets against a captioned reference set: Fréchet distance and caption alignment, with the real
held-out images as the reference (what perfect generalisation scores at this sample size) and chance."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from eidos.evaluation.alignment import caption_alignment
from eidos.evaluation.features import extract
from eidos.evaluation.frechet import FeatureStatistics, frechet_distance


@dataclass
class CaptionedImages:
    """Images (N, 3, H, W), floats in [0, 1] or uint8, with their captions and pooled caption embeddings (N, E)."""

    images: torch.Tensor
    captions: list[str]
    text: torch.Tensor

    def __post_init__(self) -> None:
        if not len(self.images) == len(self.captions) == len(self.text):
            raise ValueError(f"{len(self.images)} images, {len(self.captions)} captions and {len(self.text)} "
                             "text embeddings: they must be as many")


@dataclass
class Reference:
    """Features, their statistics and the caption embeddings of the reference (training) images."""

    features: torch.Tensor
    statistics: FeatureStatistics
    text: torch.Tensor

    @classmethod
    def of(cls, reference: CaptionedImages, extractor) -> Reference:
        features = extract(extractor, reference.images)
        return cls(features, FeatureStatistics.of(features), reference.text)


def score(images: torch.Tensor, prompts: CaptionedImages, reference: Reference, extractor,
          ks: tuple[int, ...]) -> dict[str, float]:
    """images[i] was made for prompts.captions[i]: Fréchet distance to the reference and alignment hit rates."""
    features = extract(extractor, images)
    # Identical captions are one prompt: otherwise an image's twin caption would outrank it on a tie.
    distinct, prompt_index = distinct_prompts(prompts)
    hits = caption_alignment(features, prompt_index, prompts.text[distinct], reference.features, reference.text, ks)
    return {"frechet": frechet_distance(FeatureStatistics.of(features), reference.statistics),
            **{f"top-{k}": rate for k, rate in hits.items()}}


def evaluate(
    generators: dict[str, Callable[[], torch.Tensor]],
    prompts: CaptionedImages,
    reference: CaptionedImages,
    extractor,
    ks: tuple[int, ...] = (1, 5),
) -> list[dict]:
    """One row per image source: the real held-out images (`prompts.images`), each generator (called once,
    timed) and chance. A generator returns K rounds of one image per prompt, round after round (K x N images);
    each round is scored as the real images are (N images), and the row holds the mean over the rounds, with
    their standard deviation ("<metric> std") when K > 1: more rounds narrow the noise, not the numbers' meaning."""
    ref = Reference.of(reference, extractor)
    rows = [{"images": "real held-out", **score(prompts.images, prompts, ref, extractor, ks)}]
    count = len(prompts.captions)
    for name, generate in generators.items():
        start = time.perf_counter()
        images = generate()
        seconds = time.perf_counter() - start
        if images.shape[0] == 0 or images.shape[0] % count:
            raise ValueError(f"{name} made {images.shape[0]} images for {count} prompts: expected a whole number "
                             f"of rounds of one image per prompt")
        rounds = [score(chunk, prompts, ref, extractor, ks) for chunk in images.split(count)]
        rows.append({"images": name, **mean_over_rounds(rounds), "images/s": len(images) / seconds})
    distinct = len(distinct_prompts(prompts)[0])
    rows.append({"images": "chance", **{f"top-{k}": min(1.0, k / distinct) for k in ks}})
    return rows


def mean_over_rounds(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the rounds; with several rounds also their (sample) standard deviation."""
    values = {key: torch.tensor([r[key] for r in rounds], dtype=torch.float64) for key in rounds[0]}
    row = {key: float(v.mean()) for key, v in values.items()}
    if len(rounds) > 1:
        row |= {f"{key} std": float(v.std()) for key, v in values.items()}
        row["rounds"] = len(rounds)
    return row


def distinct_prompts(prompts: CaptionedImages) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of each distinct caption's first occurrence, index of each image's caption among the distinct)."""
    position: dict[str, int] = {}  # caption -> its index among the distinct captions
    firsts: list[int] = []
    for i, caption in enumerate(prompts.captions):
        if caption not in position:
            position[caption] = len(firsts)
            firsts.append(i)
    return torch.tensor(firsts), torch.tensor([position[c] for c in prompts.captions])
