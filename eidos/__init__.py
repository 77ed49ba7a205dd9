"""Eidos: train text-to-image models on a small budget with MaskDiT + flow-anchored consistency (FACM)."""

from eidos.batch import Batch, TextEmbeddings
from eidos.config import ObjectiveConfig
from eidos.encoders.pixels import PixelCodec
from eidos.model import MaskDiT, MaskDiTOutput, TokenMask
from eidos.objectives import FACMObjective
from eidos.sampling import sample_consistency, sample_flow_euler
from eidos.sampling.pipeline import EidosPipeline

__version__ = "0.1.0"
__all__ = [
    "Batch", "EidosPipeline", "FACMObjective", "MaskDiT", "MaskDiTOutput", "ObjectiveConfig", "PixelCodec",
    "TextEmbeddings", "TokenMask",
    "sample_consistency", "sample_flow_euler",
]
