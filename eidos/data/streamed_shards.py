"""Training samples straight from webdataset shards, for users who skip the cache (data.source: shards).

An endless stream: shards are drawn at random with replacement from one seeded sequence shared by all processes,
and `wds.split_by_node` gives each process every world-th draw, so processes read different shards and none runs
dry before another (no epoch end to wait for). Samples pass a shuffle buffer, are decoded and cropped like
`eidos data encode` does, and bad ones are skipped and counted. The trainer encodes each micro-batch on its device
(codec + text encoder) as it goes. A resumed run draws a fresh stream seeded by the step it resumes at: the same
statistics, not the same samples (train from caches for sample-exact resume).
"""

from __future__ import annotations

import glob
import logging
import os
import random
from collections import Counter

import numpy as np
import webdataset as wds

from eidos.data.images import UnusableSample, caption_and_image, decode_square

logger = logging.getLogger(__name__)
MAX_MISSES = 10_000  # reads in a row without a usable sample: the shards are unreachable or all bad


def shard_urls(pattern: str) -> list[str]:
    """Shards named by a glob and/or brace pattern (`shards/{00000..00999}.tar`); remote ones (http(s)://, pipe:)
    are passed to webdataset as they are."""
    expanded = list(wds.shardlists.expand_urls(os.path.expanduser(pattern)))
    if "://" in pattern or pattern.startswith("pipe:"):
        return expanded
    found = sorted({path for part in expanded for path in glob.glob(part)})
    if not found:
        raise FileNotFoundError(f"data.train_files={pattern!r} matches no shard")
    return found


class ShardStream:
    """`take(count)` -> (keys, captions, images (count, H, W, 3) uint8), the next good samples of the stream."""

    def __init__(self, urls: list[str], resolution: int, seed: int, rank: int, shuffle_buffer: int,
                 skipped: Counter | None = None):
        self.resolution = resolution
        self.skipped = Counter() if skipped is None else skipped  # bad samples by reason
        self._misses, self._last_error = 0, None  # reads in a row that gave no usable sample
        pipeline = wds.DataPipeline(
            # one shared sequence of draws (worker_seed is the same everywhere), dealt out by rank below
            wds.ResampledShards(urls, seed=seed, worker_seed=lambda: 0, deterministic=True),
            wds.split_by_node,
            wds.tarfile_to_samples(handler=self._on_error),
            wds.shuffle(shuffle_buffer, rng=random.Random(seed * 1009 + rank)),  # each process its own order
        )
        self._samples = iter(pipeline)

    def _on_error(self, error: Exception) -> bool:
        reason = f"unreadable tar data ({type(error).__name__})"
        self.skipped[reason] += 1
        if self.skipped[reason] <= 3 or self.skipped[reason] % 1000 == 0:  # a bad shard is drawn again and again
            logger.warning("skipping unreadable shard data (%d so far): %s", self.skipped[reason], error)
        self._misses += 1
        self._last_error = error
        return self._misses < MAX_MISSES  # False ends the stream: take() then says why

    def take(self, count: int) -> tuple[list[str], list[str], np.ndarray]:
        keys, captions, images = [], [], []
        while len(keys) < count:
            sample = next(self._samples, None)
            if sample is None or self._misses >= MAX_MISSES:
                raise RuntimeError(f"no usable sample in the last {MAX_MISSES} reads from the shards (last problem: "
                                   f"{self._last_error}; skipped so far: {dict(self.skipped)}); check data.train_files")
            try:
                caption, data = caption_and_image(sample)
                image = decode_square(data, self.resolution)
            except UnusableSample as problem:
                self.skipped[str(problem)] += 1
                self._misses += 1
                self._last_error = f"{problem} in {sample.get('__url__', '?')}"
                continue
            self._misses = 0
            images.append(image)
            keys.append(sample["__key__"])
            captions.append(caption)
        return keys, captions, np.stack(images)
