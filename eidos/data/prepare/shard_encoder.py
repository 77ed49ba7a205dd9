"""Encode webdataset shards into HDF5 caches: one cache file per shard, written atomically, so a rerun skips
the shards that are done. Images are converted to RGB (grey, CMYK, palette; alpha composited on white),
centre-cropped to a square and resized to the resolution; undecodable images, empty captions and the tail of a
truncated shard are skipped and counted. Each distinct caption of a shard goes through the text encoder once: sets
with few captions (class names, templates) are then bound by image decoding, not by the text encoder.
"""

from __future__ import annotations

import logging
import tarfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from eidos.batch import TextEmbeddings
from eidos.data.cache import FORMAT_VERSION, EncodedSet, cache_attributes_of, source_stamp, write_cache
from eidos.data.images import UnusableSample, caption_and_image, decode_square, encode_images
from eidos.encoders.codecs import scaling_factor

logger = logging.getLogger(__name__)
TRUNCATED = "truncated or corrupt tar (rest of the shard lost)"


def shard_samples(path: Path, skipped: Counter) -> Iterator[dict]:
    """webdataset's samples of one shard, minus the damage of a shard cut short or corrupt.

    A cut (an interrupted download or copy) ends the shard early: the complete samples before it are kept and the
    shard counts once as "truncated or corrupt tar". webdataset passes on the sample at the cut with whatever
    members it got, so the last sample is held back and kept only if it has every member its predecessor had
    (a shard's samples share one layout); a cut that falls on a member header raises nothing in tarfile, so the
    end-of-archive blocks are checked too.
    """
    errors: list[Exception] = []

    def on_error(error: Exception) -> bool:
        errors.append(error)
        return True  # keep what was read; webdataset then ends this shard

    held, layout = None, set()
    # One shard, read whole by this process: `eidos data encode` deals shards to processes itself.
    shard = wds.WebDataset(str(path), shardshuffle=False, handler=on_error, empty_check=False, nodesplitter=None,
                           workersplitter=None)
    for sample in shard:
        if held is not None:
            yield held
            layout = set(held)
        held = sample
    damaged = bool(errors) or not ends_with_end_of_archive(path)
    if held is not None and (not damaged or (layout and layout <= set(held))):
        yield held
    if damaged:
        skipped[TRUNCATED] += 1
        reason = errors[0] if errors else "no end-of-archive blocks"
        logger.warning("%s is cut short or corrupt (%s): kept the complete samples before the damage; its cache "
                       "is marked incomplete, and encoding again after the shard is replaced redoes it", path, reason)


def ends_with_end_of_archive(path: Path) -> bool:
    """A whole tar ends with two zero blocks (tar writers pad further with zeros)."""
    size = path.stat().st_size
    if size < 2 * tarfile.BLOCKSIZE or size % tarfile.BLOCKSIZE:
        return False
    with open(path, "rb") as handle:
        handle.seek(size - 2 * tarfile.BLOCKSIZE)
        return handle.read() == bytes(2 * tarfile.BLOCKSIZE)


@dataclass
class ShardContents:
    """The good samples of one shard, decoded, and whether the shard was whole."""

    path: Path
    keys: list[str]
    captions: list[str]
    images: list[np.ndarray]
    whole: bool
    stamp: dict  # the shard's size and modification time when it was read (cache.source_stamp)


def read_shard(path: Path, resolution: int, skipped: Counter, pool: Executor | None = None) -> ShardContents:
    """The good samples of one shard; bad ones are counted in `skipped`. Images are decoded by `pool`'s threads
    when given (PIL releases the GIL while decoding), in sample order either way."""
    raw: list[tuple[str, str, bytes]] = []
    stamp = source_stamp(path)  # before reading: a shard replaced meanwhile then looks changed next time
    damaged_before = skipped[TRUNCATED]
    for sample in shard_samples(path, skipped):
        try:
            raw.append((sample["__key__"], *caption_and_image(sample)))
        except UnusableSample as problem:
            skipped[str(problem)] += 1
    whole = skipped[TRUNCATED] == damaged_before

    def decode(item: tuple[str, str, bytes]) -> np.ndarray | UnusableSample:  # a pool thread hands back the reason
        try:
            return decode_square(item[2], resolution)
        except UnusableSample as problem:
            return problem

    decoded = (pool.map if pool is not None else map)(decode, raw)
    contents = ShardContents(path, [], [], [], whole, stamp)
    for (key, caption, _), image in zip(raw, decoded, strict=True):
        if isinstance(image, UnusableSample):
            skipped[str(image)] += 1
            continue
        contents.keys.append(key)
        contents.captions.append(caption)
        contents.images.append(image)
    return contents


def read_shards_ahead(paths: list[Path], resolution: int, skipped: Counter, threads: int) -> Iterator[ShardContents]:
    """Each shard's contents, the next one read and decoded in the background while the caller encodes this one
    (JPEG decoding is the CPU side of encoding; with it hidden the GPU sets the pace)."""
    if not paths:
        return
    with ThreadPoolExecutor(max_workers=threads) as decoders, ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(read_shard, paths[0], resolution, skipped, decoders)
        for following in [*paths[1:], None]:
            contents = pending.result()
            pending = None if following is None else reader.submit(read_shard, following, resolution, skipped,
                                                                   decoders)
            yield contents


def encode_shard(contents: ShardContents, out: Path, codec, text_encoder, attributes: dict, batch_size: int,
                 device) -> int:
    """Encode one shard's contents into `out`; returns the number of samples written."""
    if not contents.keys:
        logger.warning("%s has no usable sample; no cache written", contents.path)
        return 0
    mean, logstd = encode_images(codec, np.stack(contents.images), batch_size, device)
    meta = {**attributes, "format_version": FORMAT_VERSION, "scaling_factor": scaling_factor(codec),
            "source": str(contents.path), **contents.stamp, "complete": contents.whole}
    text = encode_distinct_captions(text_encoder, contents.captions)
    write_cache(out, EncodedSet(mean, logstd, text, contents.captions, contents.keys, meta))
    return len(contents.keys)


def encode_distinct_captions(text_encoder, captions: list[str]) -> TextEmbeddings:
    """`text_encoder.encode(captions)`, with each distinct caption encoded once and its rows repeated. The rows
    are those of encoding every caption (captions are padded to the same length and encoded independently), up to
    the float32 rounding that a batch's size may change in the encoder's matrix products."""
    distinct = list(dict.fromkeys(captions))  # first-seen order
    row = {caption: index for index, caption in enumerate(distinct)}
    return text_encoder.encode(distinct)[torch.tensor([row[caption] for caption in captions])]


def check_shard_names(shards: list[Path]) -> None:
    """Refuse shards that share a file name: their caches (out/{name}.h5) would overwrite each other."""
    seen: dict[str, Path] = {}
    for shard in shards:
        if shard.stem in seen:
            raise ValueError(f"--shards matches two shards named {shard.stem} ({seen[shard.stem]} and {shard}); their "
                             "caches would overwrite each other: encode them into different --out folders")
        seen[shard.stem] = shard


def stale_caches(out: Path, shards: list[Path]) -> list[str]:
    """Caches in `out` made from a shard that is gone or has changed and is not being encoded now: a glob of
    out/*.h5 would still read them. Reported, never deleted (they may be all that is left of a shard)."""
    current = {shard.stem for shard in shards}
    found = []
    for cache in sorted(out.glob("*.h5")):
        attributes = cache_attributes_of(cache) or {}
        if cache.stem in current or not attributes.get("source"):
            continue
        source = Path(str(attributes["source"]))
        recorded = {name: attributes.get(name) for name in ("source_size", "source_mtime_ns")}
        if not source.exists():
            found.append(f"{cache} was made from {source}, which no longer exists")
        elif recorded["source_size"] is not None and recorded != source_stamp(source):
            found.append(f"{cache} was made from {source}, which has changed since")
    return found
