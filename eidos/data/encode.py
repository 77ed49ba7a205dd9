"""Encode webdataset shards into HDF5 caches: one cache file per shard, written atomically, so a rerun skips
the shards that are done. Images are converted to RGB (grey, CMYK, palette; alpha composited on white),
centre-cropped to a square and resized to the resolution; undecodable images and empty captions are skipped
and counted.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from eidos.data.cache import FORMAT_VERSION, EncodedSet, write_cache
from eidos.encoders.codecs import encode_moments, scaling_factor

logger = logging.getLogger(__name__)
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


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


def read_shard(path: Path, resolution: int, skipped: Counter) -> tuple[list[str], list[str], list[np.ndarray]]:
    """Keys, captions and images of the good samples of one shard; bad ones are counted in `skipped`."""
    keys, captions, images = [], [], []

    def on_error(error: Exception) -> bool:
        skipped[f"unreadable tar data ({type(error).__name__})"] += 1
        logger.warning("%s: %s", path, error)
        return True

    for sample in wds.WebDataset(str(path), shardshuffle=False, handler=on_error):
        image_key = next((k for k in IMAGE_KEYS if k in sample), None)
        caption = sample.get("txt", b"").decode("utf-8", errors="replace").strip()
        if image_key is None:
            skipped["no image"] += 1
            continue
        if not caption:
            skipped["missing or empty caption"] += 1
            continue
        try:
            images.append(to_rgb_square(sample[image_key], resolution))
        except (OSError, SyntaxError, ValueError):
            skipped["undecodable image"] += 1
            continue
        keys.append(sample["__key__"])
        captions.append(caption)
    return keys, captions, images


def encode_images(codec, images: np.ndarray, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W, 3) uint8 images -> posterior mean and log-std (N, C, h, w) on CPU, in batches on `device`."""
    means, logstds = [], []
    for start in range(0, len(images), batch_size):
        pixels = torch.from_numpy(np.asarray(images[start : start + batch_size])).permute(0, 3, 1, 2).float() / 255
        mean, logstd = encode_moments(codec, pixels.to(device))
        means.append(mean.cpu())
        logstds.append(logstd.cpu())
    return torch.cat(means), torch.cat(logstds)


def encode_shard(path: Path, out: Path, codec, text_encoder, attributes: dict, batch_size: int,
                 skipped: Counter, device) -> int:
    """Encode one shard into `out`; returns the number of samples written."""
    keys, captions, images = read_shard(path, attributes["resolution"], skipped)
    if not keys:
        logger.warning("%s has no usable sample; no cache written", path)
        return 0
    mean, logstd = encode_images(codec, np.stack(images), batch_size, device)
    meta = {**attributes, "format_version": FORMAT_VERSION, "scaling_factor": scaling_factor(codec),
            "source": str(path)}
    write_cache(out, EncodedSet(mean, logstd, text_encoder.encode(captions), captions, keys, meta))
    return len(keys)
