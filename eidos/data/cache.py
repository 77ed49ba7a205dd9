"""The HDF5 cache: encoded images and captions, one file per shard (DESIGN §4).

Datasets, one row per sample (chunked per sample):
  latent_mean, latent_logstd  (N, C, h, w) float16  posterior moments of the scaled latents
  text_tokens                 (N, L, D)    float16  token states
  text_mask                   (N, L)       bool     True for real tokens
  text_pooled                 (N, D)       float16  pooled text vector
  caption, key                (N,)         utf-8 strings
File attributes record format_version, codec, text_encoder, text_max_length, resolution, scaling_factor;
a reader refuses a file whose attributes do not match what the config asks for. A cache encoded from a shard
also records the shard (source, source_size, source_mtime_ns) and whether it was whole (complete), so that
`eidos data encode` redoes it when the shard changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import torch

from eidos.batch import TextEmbeddings

if TYPE_CHECKING:
    from eidos.config import DataConfig, EncodersConfig

FORMAT_VERSION = 1
MATCHED_ATTRIBUTES = ("format_version", "codec", "text_encoder", "text_max_length", "resolution")
DATASETS = ("latent_mean", "latent_logstd", "text_tokens", "text_mask", "text_pooled", "caption", "key")


def cache_attributes(data: DataConfig, encoders: EncodersConfig) -> dict:
    """The attributes a cache must carry to serve this config (checked by `read_cache`)."""
    return {"format_version": FORMAT_VERSION, "codec": encoders.codec, "text_encoder": encoders.text,
            "text_max_length": encoders.text_max_length, "resolution": data.resolution}


@dataclass
class EncodedSet:
    """An in-memory cache: moments (N, C, h, w), text embeddings (N, ...), captions and keys."""

    latent_mean: torch.Tensor
    latent_logstd: torch.Tensor
    text: TextEmbeddings
    captions: list[str]
    keys: list[str]
    attributes: dict

    def __len__(self) -> int:
        return self.latent_mean.shape[0]

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.latent_mean.shape[1:])

    @property
    def text_dim(self) -> int:
        return self.text.pooled.shape[1]

    def rows(self, indices: torch.Tensor, strings: bool = True) -> EncodedSet:
        """The samples at `indices` (any order, repeats allowed) as a set of their own; strings=False leaves
        captions and keys empty (the training step needs none)."""
        picked = indices.tolist() if strings else []
        return EncodedSet(self.latent_mean[indices], self.latent_logstd[indices], self.text[indices],
                          [self.captions[i] for i in picked], [self.keys[i] for i in picked], self.attributes)


def write_cache(path: str | Path, encoded: EncodedSet) -> None:
    """Write `encoded` to `path` atomically (a temp file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    strings = h5py.string_dtype("utf-8")
    with h5py.File(tmp, "w") as f:
        def put(name, array):
            array = np.asarray(array)
            f.create_dataset(name, data=array, chunks=(1, *array.shape[1:]) if len(array) else None)

        put("latent_mean", encoded.latent_mean.to(torch.float16).numpy())
        put("latent_logstd", encoded.latent_logstd.to(torch.float16).numpy())
        put("text_tokens", encoded.text.tokens.to(torch.float16).numpy())
        put("text_mask", encoded.text.mask.bool().numpy())
        put("text_pooled", encoded.text.pooled.to(torch.float16).numpy())
        f.create_dataset("caption", data=np.array(encoded.captions, dtype=object), dtype=strings)
        f.create_dataset("key", data=np.array(encoded.keys, dtype=object), dtype=strings)
        f.attrs.update({"format_version": FORMAT_VERSION, **encoded.attributes})
    os.replace(tmp, path)


def read_cache(path: str | Path, expected: dict | None = None) -> EncodedSet:
    """Load a whole cache file into memory, after checking its attributes against `expected`."""
    path = Path(path)
    handle = open_cache(path)
    try:
        with handle as f:
            attributes = checked_attributes(f, path, expected)
            return EncodedSet(
                latent_mean=torch.from_numpy(f["latent_mean"][:]),
                latent_logstd=torch.from_numpy(f["latent_logstd"][:]),
                text=TextEmbeddings(
                    pooled=torch.from_numpy(f["text_pooled"][:]),
                    tokens=torch.from_numpy(f["text_tokens"][:]),
                    mask=torch.from_numpy(f["text_mask"][:]),
                ),
                captions=decode_strings(f["caption"][:]),
                keys=decode_strings(f["key"][:]),
                attributes=attributes,
            )
    except OSError as error:  # h5py's error for data it cannot read
        raise damaged(path, error) from None


def open_cache(path: Path) -> h5py.File:
    """Cache file `path` opened for reading; a missing file is FileNotFoundError, an unreadable one ValueError."""
    if not path.exists():
        raise FileNotFoundError(f"cache file {path} does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise damaged(path, error) from None


def damaged(path: Path, error: OSError) -> ValueError:
    return ValueError(f"cache file {path} is damaged or not an HDF5 cache ({error}); encode its shard again "
                      "(eidos data encode) or leave it out of data.train_files / data.held_out_files")


def checked_attributes(f: h5py.File, path: Path, expected: dict | None) -> dict:
    """The attributes of an open cache file, after checking them against `expected` and that no dataset is missing."""
    attributes = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    if expected is not None:
        check_attributes(path, attributes, expected)
    missing = [n for n in DATASETS if n not in f]
    if missing:
        raise ValueError(f"cache file {path} lacks datasets {missing}; rebuild it")
    return attributes


def source_stamp(path: Path) -> dict:
    """What a cache records of the shard it was made from: its size and modification time."""
    stat = path.stat()
    return {"source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns}


def cache_attributes_of(path: Path) -> dict | None:
    """The attributes of cache file `path`, or None when it is missing or not a readable HDF5 file."""
    try:
        with h5py.File(path, "r") as f:
            return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    except OSError:  # missing, cut short, not HDF5: h5py raises OSError for each
        return None


def is_up_to_date(path: Path, shard: Path, expected: dict) -> bool:
    """Whether cache `path` was encoded from `shard` as it is now (same size and modification time), from the
    whole shard, with the `expected` attributes; `eidos data encode` redoes any other (also an unreadable one,
    or one older eidos wrote without a source record)."""
    found = cache_attributes_of(path)
    if found is None or not found.get("complete", True):
        return False
    wanted = {**expected, **source_stamp(shard)}
    return all(found.get(name) == value for name, value in wanted.items())


def decode_strings(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in values]


def check_attributes(path: Path, attributes: dict, expected: dict) -> None:
    """Refuse a cache made with another codec, text encoder, resolution or format, naming both values."""
    for name in MATCHED_ATTRIBUTES:
        if name in expected and attributes.get(name) != expected[name]:
            raise ValueError(
                f"cache file {path} was made with {name}={attributes.get(name)!r} but the config asks for "
                f"{name}={expected[name]!r}; re-encode the data or change the config"
            )


def concat_sets(sets: list[EncodedSet]) -> EncodedSet:
    """Several cache files as one set (their attributes must agree)."""
    first = sets[0]
    return EncodedSet(
        latent_mean=torch.cat([s.latent_mean for s in sets]),
        latent_logstd=torch.cat([s.latent_logstd for s in sets]),
        text=TextEmbeddings.cat([s.text for s in sets]),
        captions=[c for s in sets for c in s.captions],
        keys=[k for s in sets for k in s.keys],
        attributes=first.attributes,
    )
