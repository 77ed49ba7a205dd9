"""Text alignment without a joint image-text model: nearest-neighbour captioning.

Each image borrows the caption of its nearest training image (in the feature space of the extractor); it scores
a hit at k when its own prompt is among the k held-out prompts whose text embeddings are closest (cosine) to
the borrowed caption's. A generator that ignores its prompt scores chance (k / number of prompts); real held-out
images scored the same way show what the feature space and the captions allow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nearest(queries: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """(Q,) index of each query's nearest reference by Euclidean distance."""
    return torch.cdist(queries.double(), references.double()).argmin(dim=1)


def caption_alignment(
    features: torch.Tensor,
    prompt_index: torch.Tensor,
    prompt_text: torch.Tensor,
    reference_features: torch.Tensor,
    reference_text: torch.Tensor,
    ks: tuple[int, ...] = (1, 5),
) -> dict[int, float]:
    """Hit rate at each k. features (Q, D) of images made for prompts `prompt_index` (Q,) into prompt_text
    (P, E); reference_features (R, D) and reference_text (R, E) of the captioned reference images."""
    borrowed = F.normalize(reference_text[nearest(features, reference_features)].double(), dim=1)  # (Q, E)
    similarity = borrowed @ F.normalize(prompt_text.double(), dim=1).T  # (Q, P)
    own = similarity.gather(1, prompt_index[:, None])
    rank = (similarity >= own).sum(dim=1) - 1  # other prompts at least as close: ties count against the image
    return {k: float((rank < k).double().mean()) for k in ks}
