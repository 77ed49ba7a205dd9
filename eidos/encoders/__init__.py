"""Encoders: image codecs (pixels, the SDXL VAE or any AutoencoderKL) and text encoders (MiniLM, CLIP)."""

from eidos.encoders.codecs import decode, encode_moments, load_codec
from eidos.encoders.pixels import PixelCodec
from eidos.encoders.text import TextEncoder, encode_captions, load_text_encoder

__all__ = ["PixelCodec", "TextEncoder", "decode", "encode_captions", "encode_moments", "load_codec",
           "load_text_encoder"]
