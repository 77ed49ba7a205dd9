"""Deterministic, resumable batches from an in-memory encoded set.

Sample order is a pure function of (seed, epoch): the sample at global position p is
permutation(seed, p // N)[p % N]. The data position of a run is therefore just the number of samples seen,
and a resumed run continues the exact order. A step's global batch is split into contiguous per-process,
per-micro-batch slices, so processes read disjoint samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eidos.data.batch import Batch, TextEmbeddings
from eidos.data.cache import EncodedSet


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


def gather(data: EncodedSet, indices: torch.Tensor, device: torch.device | str) -> EncodedBatch:
    """Rows `indices` of an in-memory set as a batch on `device`."""
    text = TextEmbeddings(data.text.pooled[indices], data.text.tokens[indices], data.text.mask[indices])
    return EncodedBatch(data.latent_mean[indices].to(device), data.latent_logstd[indices].to(device), text.to(device))
