"""What the live demo computes for one state of the page: a grid of samples and the notices above it.

Kept apart from the web page (eidos/serving/app.py) so that it is tested without a browser or gradio.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from PIL import Image

from eidos.sampling.pipeline import EidosPipeline

CONSISTENCY_STEPS = (1, 2, 4)
MAX_IMAGES = 16
MIN_CELL_PIXELS = 128  # the default model's 32x32 samples, enlarged so the page shows them at a readable size


@dataclass
class Request:
    """One state of the page's controls."""

    prompt: str
    seed: int = 0
    num_images: int = 4
    sampler: str = "consistency"
    consistency_steps: int = 1
    flow_steps: int = 30
    guidance_scale: float = 1.75  # the flow branch learns unguided flow; the default recipe distils it at 1.75


@dataclass
class Result:
    grid: Image.Image
    notice: str  # a truncated or empty prompt, said in words; "" when there is nothing to say
    timing: str


class LiveGenerator:
    """An `EidosPipeline` loaded once; `generate(request)` -> the page's grid and notices."""

    def __init__(self, pipeline: EidosPipeline):
        self.pipeline = pipeline
        self.pipeline.set_progress_bar_config(disable=True)

    @property
    def max_tokens(self) -> int:
        """How many tokens the text encoder reads (the export's `text_max_length`, encoders.text_max_length)."""
        return self.pipeline.config.text_max_length

    def truncation_notice(self, prompt: str) -> str:
        """A notice when `prompt` has more tokens than the text encoder reads, with the part the model sees."""
        tokenizer = self.pipeline.tokenizer
        num_tokens = len(tokenizer(prompt, truncation=False)["input_ids"])  # special tokens counted, as encoded
        if num_tokens <= self.max_tokens:
            return ""
        kept = tokenizer(prompt, truncation=True, max_length=self.max_tokens)["input_ids"]
        seen = tokenizer.decode(kept, skip_special_tokens=True)
        return (f"⚠️ Prompt truncated: {num_tokens} tokens, the text encoder reads {self.max_tokens}. "
                f"The model sees only: \"{seen}\"")

    def check(self, request: Request) -> None:
        if not 1 <= request.num_images <= MAX_IMAGES:
            raise ValueError(f"number of images must be 1 to {MAX_IMAGES}, got {request.num_images}")
        if request.sampler == "consistency" and request.consistency_steps not in CONSISTENCY_STEPS:
            raise ValueError(f"consistency steps must be one of {CONSISTENCY_STEPS}, got {request.consistency_steps}")
        if request.seed < 0:
            raise ValueError(f"seed must be >= 0, got {request.seed}")

    def generate(self, request: Request) -> Result:
        """Image i uses seed + i (its own generator), so `eidos sample --seed SEED+i` makes the same image."""
        self.check(request)
        device = self.pipeline.device
        generators = [torch.Generator(device=device).manual_seed(request.seed + i) for i in range(request.num_images)]
        if request.sampler == "consistency":
            options = {"num_inference_steps": request.consistency_steps}
        else:
            options = {"num_inference_steps": request.flow_steps, "guidance_scale": request.guidance_scale}
        start = time.perf_counter()
        images = self.pipeline(request.prompt, sampler=request.sampler, num_images_per_prompt=request.num_images,
                               generator=generators, **options).images
        seconds = time.perf_counter() - start
        notice = self.truncation_notice(request.prompt)
        if request.prompt == "":
            notice = "Empty prompt: unconditional samples."
        steps = options["num_inference_steps"]
        timing = (f"{len(images)} image(s), {request.sampler} sampler, {steps} step(s): {seconds * 1000:.0f} ms "
                  f"on {device.type}")
        return Result(grid=image_grid(images), notice=notice, timing=timing)


def image_grid(images: list[Image.Image], min_cell_pixels: int = MIN_CELL_PIXELS) -> Image.Image:
    """Images in a near-square grid (ceil(sqrt(n)) columns), each enlarged by a whole factor (nearest pixel: the
    model's own pixels, not a smoothed guess) to at least `min_cell_pixels`, with a 4-pixel white gap."""
    side = images[0].size[0]
    cell = side * max(1, math.ceil(min_cell_pixels / side))
    gap = 4
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * cell + (columns - 1) * gap, rows * cell + (rows - 1) * gap), "white")
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        grid.paste(image.resize((cell, cell), Image.NEAREST), (column * (cell + gap), row * (cell + gap)))
    return grid
