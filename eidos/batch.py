"""The batch types at the bottom of the package: what every data source yields and every encoder, objective and
sampler consumes (so none of them imports `data`)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class TextEmbeddings:
    """Encoded prompts: pooled (B, D); token states (B, L, D) and their mask (B, L, True = real token);
    drop (B,) bool, True where the prompt is the unconditional one (the model then uses its null text)."""

    pooled: torch.Tensor
    tokens: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    drop: torch.Tensor | None = None

    def model_kwargs(self) -> dict:
        """Keyword arguments for `MaskDiT.forward` (the caller decides `drop_text`)."""
        return {"text_pooled": self.pooled, "text_tokens": self.tokens, "text_mask": self.mask}

    def _map(self, fn) -> TextEmbeddings:
        return TextEmbeddings(*(None if (t := getattr(self, f.name)) is None else fn(t) for f in fields(self)))

    def to(self, device: torch.device | str) -> TextEmbeddings:
        return self._map(lambda t: t.to(device))

    def __getitem__(self, index: slice | torch.Tensor) -> TextEmbeddings:
        return self._map(lambda t: t[index])

    def repeat_interleave(self, repeats: int) -> TextEmbeddings:
        return self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def concat(self, other: TextEmbeddings) -> TextEmbeddings:
        """Both batches stacked along dim 0 (token sequences must have the same length)."""
        size, other_size = len(self), len(other)

        def joined(name: str):
            a, b = getattr(self, name), getattr(other, name)
            if name == "drop" and (a is not None or b is not None):
                a = torch.zeros(size, dtype=torch.bool, device=self.pooled.device) if a is None else a
                b = torch.zeros(other_size, dtype=torch.bool, device=self.pooled.device) if b is None else b
            if a is None:
                return None
            # CPU autocast refuses torch.cat of bool tensors ("Unexpected floating ScalarType"): join outside it.
            with torch.autocast(device_type=a.device.type, enabled=False):
                return torch.cat([a, b])

        return TextEmbeddings(*(joined(f.name) for f in fields(self)))

    def __len__(self) -> int:
        return self.pooled.shape[0]


@dataclass
class Batch:
    """Clean latents x0 (B, C, H, W), already sampled from the codec posterior, and their captions' embeddings."""

    latents: torch.Tensor
    text: TextEmbeddings

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.latents.to(device), self.text.to(device))
