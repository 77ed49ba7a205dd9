"""Images on their way into the cache or a training batch, shared by the shard stream, the OpenMoji cache and
`eidos data encode`: a webdataset sample -> (caption, image bytes); encoded bytes -> square RGB uint8 (converted
from grey, CMYK, palette; alpha composited on white; centre-cropped; resized); uint8 images -> codec posterior
moments."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from eidos.encoders.codecs import encode_moments

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
# What PIL raises for an image it cannot or will not decode: damaged data (OSError, SyntaxError, ValueError) and
# a header declaring more than twice Image.MAX_IMAGE_PIXELS (a decompression bomb: a few KB that would decode
# into gigabytes).
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class UnusableSample(ValueError):
    """A sample to skip and count, not a failure of the run; str(error) is the reason (the key of the counts)."""


def to_rgb_square(data: bytes, resolution: int) -> np.ndarray:
    """Encoded image -> (resolution, resolution, 3) uint8: RGB, centre crop, Lanczos resize."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, "white")
            image = Image.alpha_composite(background, image)
        image = image.convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.LANCZOS)
        return np.asarray(image)


def caption_and_image(sample: dict) -> tuple[str, bytes]:
    """(caption, image bytes) of a webdataset sample; UnusableSample says why there are none."""
    image_key = next((k for k in IMAGE_KEYS if k in sample), None)
    caption = sample.get("txt", b"").decode("utf-8", errors="replace").strip()
    if image_key is None:
        raise UnusableSample("no image")
    if not caption:
        raise UnusableSample("missing or empty caption")
    return caption, sample[image_key]


def decode_square(data: bytes, resolution: int) -> np.ndarray:
    """to_rgb_square; UnusableSample for an image that cannot (or, a decompression bomb, must not) be decoded."""
    try:
        return to_rgb_square(data, resolution)
    except IMAGE_ERRORS as error:
        raise UnusableSample("undecodable image") from error


def encode_images(codec, images: np.ndarray, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W, 3) uint8 images -> posterior mean and log-std (N, C, h, w) on CPU, in batches on `device`."""
    means, logstds = [], []
    for start in range(0, len(images), batch_size):
        pixels = torch.from_numpy(np.asarray(images[start : start + batch_size])).permute(0, 3, 1, 2).float() / 255
        mean, logstd = encode_moments(codec, pixels.to(device))
        means.append(mean.cpu())
        logstds.append(logstd.cpu())
    return torch.cat(means), torch.cat(logstds)
