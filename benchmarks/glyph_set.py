"""A second image set, unrelated to emoji, for checking that a recipe generalises: coloured letters and digits.

Every image is one glyph (A-Z, a-z, 0-9) in one of the DejaVu font styles (Debian's fonts-dejavu-core, on
every machine with fontconfig) in a foreground colour on a background colour, slightly rotated, scaled and
shifted; the caption says all of it, e.g. "red bold serif capital letter G on light blue". It is written as two
image folders, OUT/train and OUT/held_out (the first --held-out images), with {stem}.txt caption sidecars: the
input of the generic `eidos data shards --images` path.

    python -m benchmarks.glyph_set --out /tmp/glyphs --images 2000 --held-out 100
"""

from __future__ import annotations

import functools
import random
import string
import subprocess

from PIL import Image, ImageDraw, ImageFont

from benchmarks.common import write_image_set

STYLES = {  # fontconfig pattern -> words of the caption
    "DejaVu Sans:style=Book": "sans",
    "DejaVu Sans:style=Bold": "bold sans",
    "DejaVu Sans:style=Oblique": "italic sans",
    "DejaVu Serif:style=Book": "serif",
    "DejaVu Serif:style=Bold": "bold serif",
    "DejaVu Sans Mono:style=Book": "monospace",
    "DejaVu Sans Mono:style=Bold": "bold monospace",
}
FOREGROUNDS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 210), "orange": (240, 140, 20),
               "purple": (130, 50, 170), "black": (20, 20, 20), "teal": (20, 150, 150), "brown": (120, 70, 30)}
BACKGROUNDS = {"white": (250, 250, 250), "light yellow": (250, 240, 190), "light blue": (200, 225, 250),
               "light grey": (215, 215, 215)}
CHARS = string.ascii_uppercase + string.ascii_lowercase + string.digits


def glyph_name(char: str) -> str:
    if char.isdigit():
        return f"digit {char}"
    return f"{'capital' if char.isupper() else 'small'} letter {char}"


@functools.cache
def font_file(pattern: str) -> str:
    """The font file fontconfig resolves for `pattern`; refuses a fallback to another family."""
    found = subprocess.run(["fc-match", "-f", "%{file}|%{family}", pattern], capture_output=True, text=True,
                           check=True).stdout
    path, family = found.split("|", 1)
    if pattern.split(":")[0] not in family:
        raise SystemExit(f"font {pattern!r} not installed (fontconfig gave {family!r}); apt-get install "
                         f"fonts-dejavu-core")
    return path


def render(char: str, font: ImageFont.FreeTypeFont, fg, bg, rng: random.Random, size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), bg)
    glyph = Image.new("L", (size, size), 0)
    ImageDraw.Draw(glyph).text((size / 2, size / 2), char, font=font, fill=255, anchor="mm")
    glyph = glyph.rotate(rng.uniform(-15, 15), resample=Image.BICUBIC,
                         translate=(rng.uniform(-0.08, 0.08) * size, rng.uniform(-0.08, 0.08) * size))
    image.paste(Image.new("RGB", (size, size), fg), mask=glyph)
    return image


def draw_glyph(rng: random.Random, size: int) -> tuple[Image.Image, str]:
    char, pattern = rng.choice(CHARS), rng.choice(list(STYLES))
    fg_name, bg_name = rng.choice(list(FOREGROUNDS)), rng.choice(list(BACKGROUNDS))
    font = ImageFont.truetype(font_file(pattern), int(size * rng.uniform(0.55, 0.75)))
    image = render(char, font, FOREGROUNDS[fg_name], BACKGROUNDS[bg_name], rng, size)
    return image, f"{fg_name} {STYLES[pattern]} {glyph_name(char)} on {bg_name}"


if __name__ == "__main__":
    write_image_set(__doc__.splitlines()[0], "glyph", draw_glyph)
