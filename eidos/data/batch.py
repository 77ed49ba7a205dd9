"""The batch type every data source yields and every objective and sampler consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TextEmbeddings:
    """Encoded prompts: pooled (B, D); token states (B, L, D) and their mask (B, L, True = real token)."""

    pooled: torch.Tensor
    tokens: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def model_kwargs(self) -> dict:
        """Keyword arguments for `MaskDiT.forward`."""
        return {"text_pooled": self.pooled, "text_tokens": self.tokens, "text_mask": self.mask}

    def to(self, device: torch.device | str) -> TextEmbeddings:
        return TextEmbeddings(*(None if t is None else t.to(device) for t in (self.pooled, self.tokens, self.mask)))

    def concat(self, other: TextEmbeddings) -> TextEmbeddings:
        """Both batches stacked along dim 0 (token sequences must have the same length)."""
        parts = zip((self.pooled, self.tokens, self.mask), (other.pooled, other.tokens, other.mask), strict=True)
        return TextEmbeddings(*(None if a is None else torch.cat([a, b]) for a, b in parts))

    def __len__(self) -> int:
        return self.pooled.shape[0]

    def __getitem__(self, index: slice | torch.Tensor) -> TextEmbeddings:
        return TextEmbeddings(*(None if t is None else t[index] for t in (self.pooled, self.tokens, self.mask)))


@dataclass
class Batch:
    """Clean latents x0 (B, C, H, W), already sampled from the codec posterior, and their captions' embeddings."""

    latents: torch.Tensor
    text: TextEmbeddings

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.latents.to(device), self.text.to(device))
