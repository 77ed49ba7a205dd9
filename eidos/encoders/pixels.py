"""The pixel codec: images in [0, 1] <-> "latents" in [-1, 1], for the embedded default.

It is a diffusers `ModelMixin, ConfigMixin` like `AutoencoderKL`, so an exported model folder can hold it the
same way; its scale and shift are persistent buffers because diffusers writes no weight file for a module with
no tensors and then cannot load it (DESIGN §6).
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images as floats in [0, 1] -> uint8 (0..255, rounded), same shape and device."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


# log-std stored for a deterministic codec: exp(-20) ~ 2e-9, so a posterior sample equals the mean.
DETERMINISTIC_LOGSTD = -20.0


class PixelCodec(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, channels: int = 3):
        super().__init__()
        self.register_buffer("scale", torch.tensor(2.0))
        self.register_buffer("shift", torch.tensor(-1.0))

    @property
    def latent_channels(self) -> int:
        return self.config.channels

    @property
    def downsample_factor(self) -> int:
        return 1

    @property
    def scaling_factor(self) -> float:
        return 1.0

    def encode_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, C, H, W) in [0, 1] -> posterior mean and log-std (B, C, H, W) of the scaled latents."""
        mean = images * self.scale + self.shift
        return mean, torch.full_like(mean, DETERMINISTIC_LOGSTD)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, C, H, W) -> images in [0, 1]."""
        return ((latents - self.shift) / self.scale).clamp(0, 1)
