"""Image feature extractors for the Fréchet distance and the alignment score.

An extractor is any callable `images (B, 3, H, W) floats in [0, 1] -> features (B, D)` with a `name`:
  "pixels"     colour layout + colour histogram + edge energy, computed, no weights: works offline everywhere.
               Its distances are only comparable with other "pixels" numbers, never with published FIDs.
  "inception"  Inception-v3 pool3 (2048-d) as in the standard FID, through torch-fidelity (pip install
               torch-fidelity); weights from --inception-weights (a local copy of pt_inception-2015-12-05) or
               torch-fidelity's own download.
  "module:fn"  your own: `fn(device)` returns such a callable (imported from your Python path).
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from eidos.encoders.pixels import to_uint8

# A discrete Laplacian: its mean absolute response measures fine structure (edges, grain, block seams).
_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


class PixelFeatures:
    """grid x grid x 3 area-averaged colours (where colour is), a joint RGB histogram of bins^3 cells (which
    colours), and the mean absolute Laplacian per channel at full and half resolution (how much fine structure)."""

    name = "pixels"

    def __init__(self, grid: int = 8, bins: int = 4):
        self.grid, self.bins = grid, bins

    @property
    def dim(self) -> int:
        return 3 * self.grid**2 + self.bins**3 + 6

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.float().clamp(0, 1)
        layout = F.adaptive_avg_pool2d(images, self.grid).flatten(1)
        cells = (images * (self.bins - 1e-6)).long()  # (B, 3, H, W) bin index per channel
        index = (cells[:, 0] * self.bins + cells[:, 1]) * self.bins + cells[:, 2]
        counts = F.one_hot(index.flatten(1), self.bins**3).sum(dim=1).float()
        histogram = counts / index[0].numel()
        edges = [self._edge_energy(images), self._edge_energy(F.avg_pool2d(images, 2))]
        return torch.cat([layout, histogram, *edges], dim=1)

    @staticmethod
    def _edge_energy(images: torch.Tensor) -> torch.Tensor:
        kernel = _LAPLACIAN.to(images)[None, None].expand(3, 1, 3, 3)
        return F.conv2d(images, kernel, groups=3).abs().mean(dim=(2, 3))


class InceptionFeatures:
    """Inception-v3 pool3 features of the standard FID, from torch-fidelity's port of the TF graph."""

    name = "inception"

    def __init__(self, device: torch.device | str = "cpu", weights: str | None = None):
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as error:
            raise ImportError(
                "the inception features need torch-fidelity (pip install torch-fidelity) and its Inception "
                "weights (pt_inception-2015-12-05; pass a local copy with --inception-weights when offline); "
                "or use --features pixels"
            ) from error
        self.model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], weights).eval().to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # torch-fidelity takes uint8 images of any size and resizes them to 299 itself, as the TF graph did
        pixels = to_uint8(images).to(self.device)
        return self.model(pixels)[0].double().cpu()


def load_feature_extractor(name: str, device: torch.device | str = "cpu", inception_weights: str | None = None):
    """"pixels", "inception", or "package.module:factory" (factory(device) -> extractor)."""
    if name == "pixels":
        return PixelFeatures()
    if name == "inception":
        return InceptionFeatures(device, inception_weights)
    if ":" not in name:
        raise ValueError(f"unknown feature extractor {name!r}: use pixels, inception or package.module:factory")
    module_name, _, factory = name.partition(":")
    extractor = getattr(importlib.import_module(module_name), factory)(device)
    if not callable(extractor):
        raise ValueError(f"{name} returned {type(extractor).__name__}, not a callable images -> features")
    return extractor


def extract(extractor, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Features (N, D) float64 of images (N, 3, H, W), floats in [0, 1] or uint8, in batches."""
    chunks = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        chunk = chunk.float() / 255 if chunk.dtype == torch.uint8 else chunk
        chunks.append(extractor(chunk).double().cpu())
    return torch.cat(chunks)
