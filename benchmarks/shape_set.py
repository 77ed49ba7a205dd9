"""A third image set, for checking that a recipe generalises to layouts: one or two coloured shapes placed on a
3 x 3 grid of positions.

Every image holds one or two shapes (circle, square, triangle, diamond, star, ring, plus), each small or large,
in one of the glyph set's foreground colours, at a named position, on one of its background colours; the caption
says all of it, e.g. "a large red star at top left and a small teal ring at bottom right on light blue". Where
the glyph set asks which character, this set asks where and how many: the caption decides the layout. It is
written like the glyph set, as two image folders, OUT/train and OUT/held_out (the first --held-out images), with
{stem}.txt caption sidecars: the input of the generic `eidos data shards --images` path.

    python -m benchmarks.shape_set --out /tmp/shapes --images 2000 --held-out 100
"""

from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw

from benchmarks.common import write_image_set
from benchmarks.glyph_set import BACKGROUNDS, FOREGROUNDS

POSITIONS = {"top left": (0, 0), "top": (1, 0), "top right": (2, 0), "left": (0, 1), "centre": (1, 1),
             "right": (2, 1), "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2)}
SIZES = {"small": 0.10, "large": 0.16}  # radius as a fraction of the image side
SHAPES = ("circle", "square", "triangle", "diamond", "star", "ring", "plus")
SUPERSAMPLE = 4  # drawn at 4x and downsampled: smooth edges


def polygon(cx: float, cy: float, radius: float, corners: int, turn: float, inner: float = 1.0) -> list[tuple]:
    """Corners of a regular polygon (or, with `inner` < 1, a star alternating radius and inner * radius)."""
    count = corners * (2 if inner < 1 else 1)
    radii = [radius * (inner if k % 2 else 1.0) for k in range(count)]
    angles = [turn + 2 * math.pi * k / count - math.pi / 2 for k in range(count)]
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for r, a in zip(radii, angles, strict=True)]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float, colour,
               turn: float) -> None:
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(1, round(radius * 0.35)))
    elif shape == "square":
        draw.polygon(polygon(cx, cy, radius * 1.15, 4, turn + math.pi / 4), fill=colour)
    elif shape == "diamond":
        draw.polygon(polygon(cx, cy, radius * 1.1, 4, 0.0), fill=colour)
    elif shape == "triangle":
        draw.polygon(polygon(cx, cy, radius * 1.15, 3, turn), fill=colour)
    elif shape == "star":
        draw.polygon(polygon(cx, cy, radius * 1.2, 5, turn, inner=0.45), fill=colour)
    elif shape == "plus":
        arm = radius * 0.35
        draw.rectangle((cx - radius, cy - arm, cx + radius, cy + arm), fill=colour)
        draw.rectangle((cx - arm, cy - radius, cx + arm, cy + radius), fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render(items: list[tuple[str, str, str, str]], background: str, rng: random.Random, size: int) -> Image.Image:
    """`items`: (size word, colour, shape, position) per shape."""
    side = size * SUPERSAMPLE
    image = Image.new("RGB", (side, side), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    for size_word, colour, shape, position in items:
        column, row = POSITIONS[position]
        cx = side * ((column + 0.5) / 3 + rng.uniform(-0.03, 0.03))
        cy = side * ((row + 0.5) / 3 + rng.uniform(-0.03, 0.03))
        draw_shape(draw, shape, cx, cy, side * SIZES[size_word], FOREGROUNDS[colour],
                   rng.uniform(-math.pi / 12, math.pi / 12))
    return image.resize((size, size), Image.LANCZOS)


def describe(items: list[tuple[str, str, str, str]], background: str) -> str:
    shapes = " and ".join(f"a {size_word} {colour} {shape} at {position}"
                          for size_word, colour, shape, position in items)
    return f"{shapes} on {background}"


def draw_shapes(rng: random.Random, size: int) -> tuple[Image.Image, str]:
    """One or two shapes at different positions (the foreground colours all differ from the light backgrounds)."""
    background = rng.choice(list(BACKGROUNDS))
    positions = rng.sample(list(POSITIONS), rng.choice((1, 2)))
    items = [(rng.choice(list(SIZES)), rng.choice(list(FOREGROUNDS)), rng.choice(SHAPES), position)
             for position in positions]
    return render(items, background, rng, size), describe(items, background)


if __name__ == "__main__":
    write_image_set(__doc__.splitlines()[0], "shapes", draw_shapes)
