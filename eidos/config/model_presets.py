"""Named model sizes, in DiT naming, in one table.

Encoder widths/depths follow DiT (S/B/L/XL = 384/12, 768/12, 1024/24, 1152/28, heads = width / 64); the decoder
follows MaskDiT (8 blocks at 512 for XL, scaled down for smaller encoders). The real-scale presets default
to 256px SDXL-VAE latents (4 x 32 x 32, patch 2 -> 256 tokens) and CLIP-L text (768-d). "tiny" is the
embedded default: 32 x 32 RGB pixels, patch 4 -> 64 tokens, MiniLM text (384-d).
"""

from __future__ import annotations

_LATENT_256 = {"in_channels": 4, "sample_size": 32, "patch_size": 2, "text_dim": 768}

PRESETS: dict[str, dict] = {
    "tiny": {
        "in_channels": 3, "sample_size": 32, "patch_size": 4, "text_dim": 384,
        "width": 192, "depth": 6, "heads": 3, "decoder_width": 128, "decoder_depth": 2, "decoder_heads": 2,
    },
    "S/2": {**_LATENT_256, "width": 384, "depth": 12, "heads": 6,
            "decoder_width": 256, "decoder_depth": 4, "decoder_heads": 4},
    "B/2": {**_LATENT_256, "width": 768, "depth": 12, "heads": 12,
            "decoder_width": 384, "decoder_depth": 6, "decoder_heads": 6},
    "L/2": {**_LATENT_256, "width": 1024, "depth": 24, "heads": 16,
            "decoder_width": 512, "decoder_depth": 8, "decoder_heads": 8},
    "XL/2": {**_LATENT_256, "width": 1152, "depth": 28, "heads": 16,
             "decoder_width": 512, "decoder_depth": 8, "decoder_heads": 8},
}


def preset_config(name: str, **overrides) -> dict:
    """The constructor arguments of preset `name`, with `overrides` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return {**PRESETS[name], **overrides}
