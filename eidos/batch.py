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

    @staticmethod
    def cat(parts: list[TextEmbeddings]) -> TextEmbeddings:
        """The batches stacked along dim 0 (token sequences of the same length); a missing `drop` counts as False."""

        def joined(name: str):
            values = [getattr(part, name) for part in parts]
            if name == "drop" and any(v is not None for v in values):
                values = [torch.zeros(len(part), dtype=torch.bool, device=part.pooled.device) if v is None else v
                          for part, v in zip(parts, values, strict=True)]
            if values[0] is None:
                return None
            # CPU autocast refuses torch.cat of bool tensors ("Unexpected floating ScalarType"): join outside it.
            with torch.autocast(device_type=values[0].device.type, enabled=False):
                return torch.cat(values)

        return TextEmbeddings(*(joined(f.name) for f in fields(TextEmbeddings)))

    def __len__(self) -> int:
        return self.pooled.shape[0]


@dataclass
class Batch:
    """Clean latents x0 (B, C, H, W), already sampled from the codec posterior, and their captions' embeddings."""

    latents: torch.Tensor
    text: TextEmbeddings

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.latents.to(device), self.text.to(device))
