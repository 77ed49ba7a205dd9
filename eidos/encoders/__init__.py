"""Encoders: image codecs (pixels; the SDXL VAE comes with the real-scale data path) and text encoders."""

from eidos.config import EncodersConfig
from eidos.encoders.pixels import PixelCodec
from eidos.encoders.text import MiniLMTextEncoder


def build_codec(config: EncodersConfig) -> PixelCodec:
    return PixelCodec(channels=3)


def build_text_encoder(config: EncodersConfig, device="cpu") -> MiniLMTextEncoder:
    return MiniLMTextEncoder(max_length=config.text_max_length, device=device)


__all__ = ["PixelCodec", "MiniLMTextEncoder", "build_codec", "build_text_encoder"]
