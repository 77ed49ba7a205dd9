"""Image codecs: the pixel codec of the embedded default, or a diffusers `AutoencoderKL` (the SDXL VAE).

Both are diffusers `ModelMixin`s, so a pipeline folder stores either as its `vae`. The codec classes carry the
behaviour (`PixelCodec`, and `VaeCodec` wrapping an AutoencoderKL), one interface: images in [0, 1] <-> scaled
latents, and the posterior moments the HDF5 cache stores.
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


class VaeCodec:
    """A diffusers `AutoencoderKL` behind `PixelCodec`'s interface. A wrapper, not a subclass: a pipeline folder
    then still records the VAE as diffusers' own class and loads anywhere diffusers does."""

    def __init__(self, vae: AutoencoderKL):
        self.vae = vae

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @torch.no_grad()
    def encode_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) in [0, 1] -> mean and log-std (B, C, H/f, W/f) of the *scaled* latent posterior.

        z = (mean + std n - shift) * scaling_factor, so the scaled mean is (mean - shift) * sf and the scaled
        log-std is log(std) + log(sf) (the VAE's log-variance / 2).
        """
        vae = self.vae
        posterior = vae.encode(images.to(vae.device, vae.dtype) * 2 - 1).latent_dist
        shift = vae.config.shift_factor or 0.0
        mean = (posterior.mean.float() - shift) * self.scaling_factor
        logstd = posterior.logvar.float() / 2 + math.log(self.scaling_factor)
        return mean, logstd

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, h, w) -> images (B, 3, H, W) in [0, 1]."""
        shift = self.vae.config.shift_factor or 0.0
        images = self.vae.decode(latents.to(self.vae.dtype) / self.scaling_factor + shift).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)


def as_codec(module: Codec) -> PixelCodec | VaeCodec:
    """The codec interface of a pipeline's `vae` module (the one place that tells the two kinds apart)."""
    return module if isinstance(module, PixelCodec) else VaeCodec(module)


# Front doors for callers holding the pipeline's `vae` module.
def scaling_factor(codec: Codec) -> float:
    return as_codec(codec).scaling_factor


def latent_channels(codec: Codec) -> int:
    return as_codec(codec).latent_channels


def downsample_factor(codec: Codec) -> int:
    return as_codec(codec).downsample_factor


@torch.no_grad()
def encode_moments(codec: Codec, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, 3, H, W) in [0, 1] -> mean and log-std of the scaled latent posterior (B, C, H/f, W/f)."""
    return as_codec(codec).encode_moments(images)


@torch.no_grad()
def decode(codec: Codec, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents (B, C, h, w) -> images (B, 3, H, W) in [0, 1]."""
    return as_codec(codec).decode(latents)
