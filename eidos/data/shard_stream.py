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

from eidos.data.encode import IMAGE_KEYS, to_rgb_square

logger = logging.getLogger(__name__)


def shard_urls(pattern: str) -> list[str]:
    """Local shards by glob; anything webdataset opens itself (brace patterns, http(s)://, pipe:) as given."""
    if "://" in pattern or pattern.startswith("pipe:"):
        return list(wds.shardlists.expand_urls(pattern))
    found = sorted(glob.glob(os.path.expanduser(pattern)))
    if not found:
        raise FileNotFoundError(f"data.train_files={pattern!r} matches no shard")
    return found


class ShardStream:
    """`take(count)` -> (keys, captions, images (count, H, W, 3) uint8), the next good samples of the stream."""

    def __init__(self, urls: list[str], resolution: int, seed: int, rank: int, shuffle_buffer: int,
                 skipped: Counter | None = None):
        self.resolution = resolution
        self.skipped = Counter() if skipped is None else skipped  # bad samples by reason
        pipeline = wds.DataPipeline(
            # one shared sequence of draws (worker_seed is the same everywhere), dealt out by rank below
            wds.ResampledShards(urls, seed=seed, worker_seed=lambda: 0, deterministic=True),
            wds.split_by_node,
            wds.tarfile_to_samples(handler=self._on_error),
            wds.shuffle(shuffle_buffer, rng=random.Random(seed * 1009 + rank)),  # each process its own order
        )
        self._samples = iter(pipeline)

    def _on_error(self, error: Exception) -> bool:
        self.skipped[f"unreadable tar data ({type(error).__name__})"] += 1
        logger.warning("skipping unreadable shard data: %s", error)
        return True

    def take(self, count: int) -> tuple[list[str], list[str], np.ndarray]:
        keys, captions, images = [], [], []
        while len(keys) < count:
            sample = next(self._samples)
            image_key = next((k for k in IMAGE_KEYS if k in sample), None)
            caption = sample.get("txt", b"").decode("utf-8", errors="replace").strip()
            if image_key is None or not caption:
                self.skipped["no image" if image_key is None else "missing or empty caption"] += 1
                continue
            try:
                images.append(to_rgb_square(sample[image_key], self.resolution))
            except (OSError, SyntaxError, ValueError):
                self.skipped["undecodable image"] += 1
                continue
            keys.append(sample["__key__"])
            captions.append(caption)
        return keys, captions, np.stack(images)
