"""The network: layers, token masking and MaskDiT (its named sizes live in `eidos.config.model_presets`)."""

from eidos.config.model_presets import PRESETS
from eidos.model.maskdit import MaskDiT, MaskDiTOutput
from eidos.model.masking import TokenMask

__all__ = ["MaskDiT", "MaskDiTOutput", "TokenMask", "PRESETS"]
