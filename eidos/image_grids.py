"""Labelled PIL image grids (rows are prompts, columns are samplers or seeds), for the training previews and
`eidos sample`; drawing, not sampling, so it sits beside the package root and imports only the pixel conversion."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from eidos.encoders.pixels import to_uint8

LABEL_WIDTH = 200
HEADER_HEIGHT = 16


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] -> PIL images."""
    array = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]


def labelled_grid(
    columns: dict[str, list[Image.Image]], row_labels: list[str], cell_size: int = 64
) -> Image.Image:
    """A grid with one column per entry of `columns` (header = its key) and one row per label."""
    font = ImageFont.load_default()
    rows = len(row_labels)
    width = LABEL_WIDTH + cell_size * len(columns)
    grid = Image.new("RGB", (width, HEADER_HEIGHT + rows * cell_size), "white")
    draw = ImageDraw.Draw(grid)
    for c, (title, images) in enumerate(columns.items()):
        x = LABEL_WIDTH + c * cell_size
        draw.text((x + 2, 2), title, fill="black", font=font)
        for r, image in enumerate(images):
            grid.paste(image.resize((cell_size, cell_size), Image.NEAREST), (x, HEADER_HEIGHT + r * cell_size))
    for r, label in enumerate(row_labels):
        draw.text((4, HEADER_HEIGHT + r * cell_size + cell_size // 2 - 6), label[:32], fill="black", font=font)
    return grid


def pil_to_array(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8, for tensorboard."""
    return np.asarray(image.convert("RGB"))
