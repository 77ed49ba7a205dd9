"""The network: layers, token masking, MaskDiT and its size presets."""

from eidos.model.maskdit import MaskDiT, MaskDiTOutput
from eidos.model.masking import TokenMask
from eidos.model.presets import PRESETS

__all__ = ["MaskDiT", "MaskDiTOutput", "TokenMask", "PRESETS"]
