"""Image codecs: the pixel codec of the embedded default, or a diffusers `AutoencoderKL` (the SDXL VAE).

Both are diffusers `ModelMixin`s, so a pipeline folder stores either as its `vae`. These functions give them
one interface: images in [0, 1] <-> scaled latents, and the posterior moments the HDF5 cache stores.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from eidos.encoders.pixels import PixelCodec

SDXL_VAE = "madebyollin/sdxl-vae-fp16-fix"  # the SDXL VAE, finetuned to run in fp16 without overflow
Codec = PixelCodec | AutoencoderKL


def load_codec(name: str) -> Codec:
    """"pixels", "sdxl" (= madebyollin/sdxl-vae-fp16-fix), or any AutoencoderKL hub id or local folder
    (a pipeline folder with a vae/ subfolder works too)."""
    if name == "pixels":
        return PixelCodec()
    source = SDXL_VAE if name == "sdxl" else name
    subfolder = "vae" if (Path(source) / "vae" / "config.json").exists() else None
    return AutoencoderKL.from_pretrained(source, subfolder=subfolder)


def scaling_factor(codec: Codec) -> float:
    return codec.scaling_factor if isinstance(codec, PixelCodec) else float(codec.config.scaling_factor)


def latent_channels(codec: Codec) -> int:
    return codec.latent_channels if isinstance(codec, PixelCodec) else int(codec.config.latent_channels)


def downsample_factor(codec: Codec) -> int:
    if isinstance(codec, PixelCodec):
        return 1
    return 2 ** (len(codec.config.block_out_channels) - 1)


@torch.no_grad()
def encode_moments(codec: Codec, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, 3, H, W) in [0, 1] -> mean and log-std (B, C, H/f, W/f) of the *scaled* latent posterior.

    For a VAE: z = (mean + std n - shift) * scaling_factor, so the scaled mean is (mean - shift) * sf and
    the scaled log-std is log(std) + log(sf) (the VAE's log-variance / 2).
    """
    if isinstance(codec, PixelCodec):
        return codec.encode_moments(images)
    posterior = codec.encode(images.to(codec.device, codec.dtype) * 2 - 1).latent_dist
    factor = scaling_factor(codec)
    shift = codec.config.shift_factor or 0.0
    mean = (posterior.mean.float() - shift) * factor
    logstd = posterior.logvar.float() / 2 + math.log(factor)
    return mean, logstd


@torch.no_grad()
def decode(codec: Codec, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents (B, C, h, w) -> images (B, 3, H, W) in [0, 1]."""
    if isinstance(codec, PixelCodec):
        return codec.decode(latents)
    shift = codec.config.shift_factor or 0.0
    images = codec.decode(latents.to(codec.dtype) / scaling_factor(codec) + shift).sample
    return (images.float() / 2 + 0.5).clamp(0, 1)
