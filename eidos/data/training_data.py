"""What the trainer reads: encoded rows by global sample position (HDF5 caches, in memory or streamed), or
webdataset shards encoded on the fly (data.source: shards). One interface, so the loop does not care."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from eidos.config import Config
from eidos.data.batch_order import EncodedBatch, EpochOrder, to_batch
from eidos.data.cache import EncodedSet, cache_attributes
from eidos.data.sources import cache_files, load_encoded_sets, read_sets
from eidos.data.streamed_shards import ShardStream, shard_urls
from eidos.encoders.codecs import downsample_factor, encode_moments, latent_channels


@dataclass
class TrainingData:
    """read(position, count) -> raw rows (called from the trainer's prefetch thread, one call at a time);
    encode(rows, device) -> the batch on the device; preview_rows: encoded training samples the sample grids may
    show."""

    latent_shape: tuple[int, ...]
    text_dim: int
    num_samples: int | None  # None for an endless stream
    read: Callable[[int, int], object]
    encode: Callable[[object, torch.device], EncodedBatch]
    preview_rows: EncodedSet
    held_out: EncodedSet | None
    read_ahead: bool  # worth a background thread: reads from disk or decodes images
    skipped: Counter = field(default_factory=Counter)  # bad samples met while streaming shards, by reason


def open_training_data(config: Config, codec, text_encoder, rank: int, build_guard=nullcontext) -> TrainingData:
    if config.data.source == "shards":
        return _shard_data(config, codec, text_encoder, rank)
    train_set, held_out = load_encoded_sets(config, codec, text_encoder, build_guard)
    order = EpochOrder(len(train_set), config.train.seed)
    return TrainingData(
        train_set.latent_shape, train_set.text_dim, len(train_set),
        read=lambda position, count: train_set.rows(order.indices(position, count), strings=False),
        encode=to_batch, preview_rows=train_set, held_out=held_out,
        read_ahead=not isinstance(train_set, EncodedSet),  # streamed from the files
    )


def _shard_data(config: Config, codec, text_encoder, rank: int) -> TrainingData:
    data = config.data
    urls = shard_urls(data.train_files)
    _, held_out_files = cache_files(data)
    expected = cache_attributes(data, config.encoders)
    held_out = read_sets(held_out_files, expected)
    side = data.resolution // downsample_factor(codec)
    streams: dict[str, ShardStream] = {}
    skipped: Counter = Counter()

    def read(position: int, count: int):
        if "train" not in streams:
            # The first read is micro-batch 0 of the first step, at position samples_seen + rank * count: all
            # processes seed one shared draw sequence with samples_seen, so a resumed run draws a fresh one.
            samples_seen = position - rank * count
            streams["train"] = ShardStream(urls, data.resolution, config.train.seed * 1_000_003 + samples_seen,
                                           rank, data.shuffle_buffer, skipped)
        return streams["train"].take(count)

    def encode(taken, device: torch.device) -> EncodedBatch:
        return encode_samples(codec, text_encoder, taken, device)

    preview_stream = ShardStream(urls, data.resolution, config.train.seed + 1, 0, data.shuffle_buffer)
    keys, captions, images = preview_stream.take(max(1, config.sampling.num_train_prompts))
    batch = encode_samples(codec, text_encoder, (keys, captions, images), torch.device("cpu"))
    preview_rows = EncodedSet(batch.latent_mean, batch.latent_logstd, batch.text, captions, keys, expected)
    return TrainingData((latent_channels(codec), side, side), text_encoder.dim, None, read, encode, preview_rows,
                        held_out, read_ahead=True, skipped=skipped)


@torch.no_grad()
def encode_samples(codec, text_encoder, taken: tuple[list[str], list[str], np.ndarray], device) -> EncodedBatch:
    """Decoded shard samples -> posterior moments and text embeddings, computed on `device`."""
    _, captions, images = taken
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).to(device)
    mean, logstd = encode_moments(codec, pixels)
    return EncodedBatch(mean, logstd, text_encoder.encode(captions).to(device))
