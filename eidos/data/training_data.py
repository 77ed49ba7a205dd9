"""What the trainer reads, whatever the source: `open_training_data` returns a `TrainingData`, either encoded rows
by global sample position (the OpenMoji cache or HDF5 caches, in memory or streamed from their files) or webdataset
shards encoded on the fly (data.source: shards). The loop asks it for its micro-batches from a number of samples
seen and never looks at the source."""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import nullcontext
from typing import Protocol

import numpy as np
import torch

from eidos.config import Config
from eidos.data.batch_order import BatchLayout, EncodedBatch, EpochOrder, MicroBatches, to_batch
from eidos.data.cache import EncodedSet, cache_attributes
from eidos.data.sources import DataFiles, load_encoded_sets, read_sets
from eidos.data.streamed_cache import StreamedCache
from eidos.data.streamed_shards import ShardStream
from eidos.encoders.codecs import downsample_factor, encode_moments, latent_channels

logger = logging.getLogger(__name__)


class TrainingData(Protocol):
    """The training samples of a run. latent_shape (C, h, w) and text_dim size the model; num_samples is None
    for an endless stream; preview_rows are encoded training samples the sample grids may show; held_out the
    held-out set (or None)."""

    latent_shape: tuple[int, ...]
    text_dim: int
    num_samples: int | None
    preview_rows: EncodedSet | StreamedCache
    held_out: EncodedSet | None

    def batches(self, samples_seen: int, layout: BatchLayout, device: torch.device) -> MicroBatches:
        """This process's micro-batches on `device`, in training order from the step at `samples_seen` on."""
        ...

    def close(self) -> None:
        """Log what the run met (bad samples skipped), after training."""
        ...


def open_training_data(config: Config, files: DataFiles, codec, text_encoder, rank: int, device: torch.device,
                       build_guard=nullcontext) -> TrainingData:
    """The training data of `config` (its `files` found by `sources.find_files`), checked against the encoders
    and resolution. `build_guard()` wraps building the OpenMoji cache (the trainer passes main_process_first)."""
    if config.data.source == "shards":
        return ShardSamples(config, files, codec, text_encoder, rank, device)
    train_set, held_out = load_encoded_sets(config, codec, text_encoder, build_guard, files)
    return EncodedRows(train_set, held_out, config.train.seed)


class EncodedRows:
    """Encoded rows (the OpenMoji cache or HDF5 caches, in memory or streamed from their files) in `EpochOrder`:
    the data position of a run is the number of samples seen, so a resumed run continues the exact order."""

    def __init__(self, train_set: EncodedSet | StreamedCache, held_out: EncodedSet | None, seed: int):
        self.train_set, self.held_out, self.preview_rows = train_set, held_out, train_set
        self.latent_shape, self.text_dim, self.num_samples = train_set.latent_shape, train_set.text_dim, len(train_set)
        self.order = EpochOrder(len(train_set), seed)

    def read(self, position: int, count: int) -> EncodedSet:
        return self.train_set.rows(self.order.indices(position, count), strings=False)

    def batches(self, samples_seen: int, layout: BatchLayout, device: torch.device) -> MicroBatches:
        # Rows streamed from the files are worth a background thread; in-memory rows are not (loader.Prefetcher).
        streamed = isinstance(self.train_set, StreamedCache)
        return MicroBatches(self.read, to_batch, layout.positions(samples_seen), layout.micro_batch, device,
                            ahead=streamed)

    def close(self) -> None:
        pass


class ShardSamples:
    """An endless stream of webdataset shard samples, encoded on the training device as they come (the codec and
    text encoder move there once the preview rows are encoded). Resume is statistical: a resumed run draws a fresh
    stream seeded by the samples seen."""

    def __init__(self, config: Config, files: DataFiles, codec, text_encoder, rank: int, device: torch.device):
        data = config.data
        self.config, self.urls, self.rank = config, files.train, rank
        self.codec, self.text_encoder = codec, text_encoder
        expected = cache_attributes(data, config.encoders)
        self.held_out = read_sets(files.held_out, expected)
        side = data.resolution // downsample_factor(codec)
        self.latent_shape, self.text_dim = (latent_channels(codec), side, side), text_encoder.dim
        self.num_samples = None
        self.skipped: Counter = Counter()  # bad samples met while streaming, by reason
        preview_stream = ShardStream(self.urls, data.resolution, config.train.seed + 1, 0, data.shuffle_buffer)
        keys, captions, images = preview_stream.take(max(1, config.sampling.num_train_prompts))
        batch = self.encode((keys, captions, images), torch.device("cpu"))
        self.preview_rows = EncodedSet(batch.latent_mean, batch.latent_logstd, batch.text, captions, keys, expected)
        self.codec, text_encoder.model = codec.to(device), text_encoder.model.to(device)

    def batches(self, samples_seen: int, layout: BatchLayout, device: torch.device) -> MicroBatches:
        # All processes seed one shared draw sequence with samples_seen (ShardStream deals it out by rank), so a
        # resumed run draws a fresh one.
        data = self.config.data
        stream = ShardStream(self.urls, data.resolution, self.config.train.seed * 1_000_003 + samples_seen,
                             layout.rank, data.shuffle_buffer, self.skipped)
        return MicroBatches(lambda _position, count: stream.take(count), self.encode,
                            layout.positions(samples_seen), layout.micro_batch, device, ahead=True)

    def encode(self, taken: tuple[list[str], list[str], np.ndarray], device: torch.device) -> EncodedBatch:
        return encode_samples(self.codec, self.text_encoder, taken, device)

    def close(self) -> None:
        if self.skipped:
            logger.warning("process %d skipped bad shard samples: %s", self.rank, dict(self.skipped))


@torch.no_grad()
def encode_samples(codec, text_encoder, taken: tuple[list[str], list[str], np.ndarray], device) -> EncodedBatch:
    """Decoded shard samples -> posterior moments and text embeddings, computed on `device`."""
    _, captions, images = taken
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).to(device)
    mean, logstd = encode_moments(codec, pixels)
    return EncodedBatch(mean, logstd, text_encoder.encode(captions).to(device))
