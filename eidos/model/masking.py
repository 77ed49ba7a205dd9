"""Random token masking for MaskDiT training (Zheng et al. 2023, after MAE's random_masking).

Per sample: draw uniform noise over the N tokens, ids_shuffle = argsort(noise), ids_restore =
argsort(ids_shuffle); the first round(N (1 - r)) shuffled tokens are kept. The same `TokenMask` object is
drawn once per training example by the objective and passed to every forward of it (flow branch, unconditional
pass, consistency branch and its tangent).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


def num_kept_tokens(num_tokens: int, mask_ratio: float) -> int:
    """round(N (1 - r)), at least one token."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, round(num_tokens * (1.0 - mask_ratio)))


@dataclass(frozen=True)
class TokenMask:
    """Which tokens each sample keeps. ids_shuffle (B, N): a permutation per sample; the first `num_kept` are kept."""

    ids_shuffle: torch.Tensor
    num_kept: int

    @classmethod
    def random(
        cls,
        batch_size: int,
        num_tokens: int,
        mask_ratio: float,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> TokenMask:
        noise = torch.rand(batch_size, num_tokens, generator=generator, device=device)
        return cls(ids_shuffle=noise.argsort(dim=1), num_kept=num_kept_tokens(num_tokens, mask_ratio))

    def __getitem__(self, index: slice) -> TokenMask:
        """The masks of a slice of the batch."""
        return TokenMask(self.ids_shuffle[index], self.num_kept)

    @property
    def ids_keep(self) -> torch.Tensor:
        """(B, K) indices of kept tokens, in shuffled order."""
        return self.ids_shuffle[:, : self.num_kept]

    @cached_property  # one argsort per mask, however many forwards reuse it
    def ids_restore(self) -> torch.Tensor:
        """(B, N) position of each original token in the shuffled sequence."""
        return self.ids_shuffle.argsort(dim=1)

    @cached_property
    def removed(self) -> torch.Tensor:
        """(B, N) bool, True where a token was removed (not seen by the encoder)."""
        removed = torch.ones_like(self.ids_shuffle, dtype=torch.bool)
        return removed.scatter(1, self.ids_keep, False)

    def keep(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, K, D): the kept tokens, in shuffled order."""
        index = self.ids_keep[..., None].expand(-1, -1, tokens.shape[-1])
        return tokens.gather(1, index)

    def restore(self, kept: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        """(B, K, D) kept tokens + fill (D,) for removed ones -> (B, N, D) in the original token order."""
        batch, _, width = kept.shape
        num_removed = self.ids_shuffle.shape[1] - self.num_kept
        filler = fill.to(kept.dtype).expand(batch, num_removed, width)
        shuffled = torch.cat([kept, filler], dim=1)  # (B, N, D) in shuffled order
        index = self.ids_restore[..., None].expand(-1, -1, width)
        return shuffled.gather(1, index)
