"""Build (once, on first use by `eidos train` or `eidos eval`) the HDF5 caches of the embedded OpenMoji default:
rendered, encoded, split.

The cache folder's name is a hash of everything that determines its contents (package versions, render
settings, split, codec, text encoder), so a change of any input builds a new cache and an unchanged one is
reused as is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import emoji

from eidos.config import DataConfig, EncodersConfig
from eidos.data import openmoji_set
from eidos.data.cache import EncodedSet, cache_attributes, write_cache
from eidos.data.images import encode_images
from eidos.encoders.codecs import scaling_factor

logger = logging.getLogger(__name__)


def cache_root(data: DataConfig) -> Path:
    if data.cache_dir:
        return Path(data.cache_dir).expanduser()
    return Path(os.environ.get("EIDOS_CACHE_DIR", Path.home() / ".cache" / "eidos"))


def openmoji_cache_dir(data: DataConfig, encoders: EncodersConfig) -> Path:
    inputs = {
        **cache_attributes(data, encoders),
        "openmoji": openmoji_set.openmoji_version(), "emoji": emoji.__version__,
        "render": [openmoji_set.RENDER_SIZE, openmoji_set.FONT_SIZE], "skin_tone_variants": data.skin_tone_variants,
        "held_out_fraction": data.held_out_fraction, "split_seed": data.split_seed,
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root(data) / f"openmoji-{digest}"


def prepare_openmoji(data: DataConfig, encoders: EncodersConfig, codec, text_encoder) -> dict[str, Path]:
    """Paths of the "train" and "held_out" caches, building them if they do not exist yet."""
    folder = openmoji_cache_dir(data, encoders)
    paths = {"train": folder / "train.h5", "held_out": folder / "held_out.h5"}
    if all(p.exists() for p in paths.values()):
        logger.info("reusing the OpenMoji cache in %s", folder)
        return paths
    logger.info("building the OpenMoji cache in %s", folder)
    items, skipped = openmoji_set.list_emoji(data.skin_tone_variants)
    train, held_out = openmoji_set.split_held_out(items, data.held_out_fraction, data.split_seed)
    attributes = {**cache_attributes(data, encoders), "source": "openmoji", "scaling_factor": scaling_factor(codec)}
    for split, subset in (("train", train), ("held_out", held_out)):
        mean, logstd = encode_images(codec, openmoji_set.render(subset, data.resolution), batch_size=256, device="cpu")
        captions = [e.caption for e in subset]
        encoded = EncodedSet(mean, logstd, text_encoder.encode(captions), captions, [e.key for e in subset], attributes)
        write_cache(paths[split], encoded)
    manifest = {"train": len(train), "held_out": len(held_out), "skipped": dict(skipped)}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    logger.info("OpenMoji cache: %d train, %d held out, skipped %s", len(train), len(held_out), dict(skipped))
    return paths
