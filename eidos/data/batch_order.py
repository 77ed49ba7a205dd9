"""Deterministic, resumable batches from an encoded set (in memory or streamed from its cache files).

Sample order is a pure function of (seed, epoch): the sample at global position p is
permutation(seed, p // N)[p % N]. The data position of a run is therefore just the number of samples seen,
and a resumed run continues the exact order. A step's global batch is split into contiguous per-process,
per-micro-batch slices, so processes read disjoint samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from eidos.batch import Batch, TextEmbeddings
from eidos.data.cache import EncodedSet
from eidos.data.streamed_cache import StreamedCache


@dataclass
class EncodedBatch:
    """What a data source yields: latent posterior moments (B, C, h, w) and text embeddings."""

    latent_mean: torch.Tensor
    latent_logstd: torch.Tensor
    text: TextEmbeddings

    def sample(self, generator: torch.Generator | None = None) -> Batch:
        """Draw x0 = mean + exp(logstd) * n from the codec posterior (a fresh draw each step, as in EDM2)."""
        mean = self.latent_mean.float()
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        return Batch(mean + self.latent_logstd.float().exp() * noise, self.text)


class EpochOrder:
    """Global sample positions -> dataset indices, reshuffled every epoch from (seed, epoch)."""

    def __init__(self, num_samples: int, seed: int):
        if num_samples < 1:
            raise ValueError("the training set is empty")
        self.num_samples = num_samples
        self.seed = seed
        self._cache: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache[epoch] = torch.randperm(self.num_samples, generator=generator)
            for old in [e for e in self._cache if e < epoch - 1]:  # keep two epochs: batches straddle them
                del self._cache[old]
        return self._cache[epoch]

    def indices(self, start: int, count: int) -> torch.Tensor:
        """Dataset indices of global positions [start, start + count)."""
        positions = torch.arange(start, start + count)
        epochs = positions // self.num_samples
        out = torch.empty(count, dtype=torch.long)
        for epoch in epochs.unique().tolist():
            where = epochs == epoch
            out[where] = self.permutation(epoch)[positions[where] % self.num_samples]
        return out


def micro_batch_start(samples_seen: int, micro: int, rank: int, world: int, micro_batch: int) -> int:
    """Global position of the first sample of (micro-batch, process) in the step that starts at samples_seen.

    A step's global batch of world x accumulation x micro_batch positions is cut into contiguous slices,
    micro-batch-major, so processes read disjoint samples and together read the whole batch.
    """
    return samples_seen + (micro * world + rank) * micro_batch


@dataclass(frozen=True)
class BatchLayout:
    """How one optimizer step's global batch of batch_size samples is cut: `world` processes x `accumulation`
    micro-batches of micro_batch samples; this process is `rank`."""

    batch_size: int
    accumulation: int
    rank: int
    world: int

    @property
    def micro_batch(self) -> int:
        return self.batch_size // (self.world * self.accumulation)

    def positions(self, samples_seen: int) -> Iterator[int]:
        """Global positions of this process's micro-batches in training order, from the step at samples_seen on."""
        while True:
            for micro in range(self.accumulation):
                yield micro_batch_start(samples_seen, micro, self.rank, self.world, self.micro_batch)
            samples_seen += self.batch_size


class MicroBatches:
    """This process's micro-batches in training order: `read(position, count)` -> rows (through a `Prefetcher`,
    which reads the next micro-batch while this one computes), then `encode(rows, device)` -> the batch."""

    def __init__(self, read: Callable[[int, int], object], encode: Callable[[object, torch.device], EncodedBatch],
                 positions: Iterator[int], count: int, device: torch.device, ahead: bool):
        self._prefetcher = Prefetcher(read, ahead)
        self._encode, self._positions, self._count, self._device = encode, positions, count, device
        self._next = next(positions)

    def __iter__(self) -> MicroBatches:
        return self

    def __next__(self) -> EncodedBatch:
        position, self._next = self._next, next(self._positions)
        return self._encode(self._prefetcher.get(position, self._count, self._next), self._device)

    def close(self) -> None:
        self._prefetcher.close()


def gather(data: EncodedSet | StreamedCache, indices: torch.Tensor, device: torch.device | str) -> EncodedBatch:
    """Rows `indices` of a set (in memory or streamed from its files) as a batch on `device`."""
    return to_batch(data.rows(indices, strings=False), device)


def to_batch(rows: EncodedSet, device: torch.device | str) -> EncodedBatch:
    return EncodedBatch(rows.latent_mean.to(device), rows.latent_logstd.to(device), rows.text.to(device))


class Prefetcher:
    """Reads the rows of the next micro-batch in a background thread while the current one computes.

    `get(start, count, next_start)` returns `read(start, count)` and starts reading the micro-batch it is told
    comes next; asked for anything else, it waits for that read and reads synchronously. Each read is the same
    call it would be without prefetching, in the same order, so prefetching never changes what a step sees.
    """

    def __init__(self, read: Callable[[int, int], object], ahead: bool = True):
        self.read = read
        # ahead=False reads in the caller's thread: for in-memory rows (a 2 ms gather) a second thread only adds a
        # second OpenMP team fighting the step's for the cores (35% slower default run on our 2-core CPU).
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eidos-prefetch") if ahead else None
        self._pending: tuple[tuple[int, int], Future] | None = None

    def get(self, start: int, count: int, next_start: int):
        rows = None
        if self._pending is not None:
            key, future = self._pending
            rows = future.result()  # waited for even when unwanted: one reader at a time
            if key != (start, count):
                rows = None
        if rows is None:
            rows = self.read(start, count)
        if self._pool is not None:
            self._pending = ((next_start, count), self._pool.submit(self.read, next_start, count))
        return rows

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
