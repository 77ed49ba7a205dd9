"""An exported model folder: everything `eidos sample` needs to turn a prompt into an image.

  transformer/   MaskDiT (save_pretrained: config.json + safetensors)
  codec/         the image codec (save_pretrained)
  eidos.json     text encoder name and max length, image resolution
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from eidos.config import EncodersConfig
from eidos.encoders import MiniLMTextEncoder, PixelCodec, build_text_encoder
from eidos.model import MaskDiT

INFO_FILE = "eidos.json"


@dataclass
class ExportedModel:
    transformer: MaskDiT
    codec: PixelCodec
    text_encoder: MiniLMTextEncoder
    resolution: int


def export_model(folder: Path, transformer: MaskDiT, codec: PixelCodec, encoders: EncodersConfig,
                 resolution: int) -> None:
    """Write the folder atomically (temp folder, then rename over any previous export)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    transformer.save_pretrained(tmp / "transformer")
    codec.save_pretrained(tmp / "codec")
    info = {"text_encoder": encoders.text, "text_max_length": encoders.text_max_length, "codec": encoders.codec,
            "resolution": resolution}
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def is_exported_model(folder: Path) -> bool:
    return (Path(folder) / INFO_FILE).exists()


def load_model(folder: str | Path, device="cpu") -> ExportedModel:
    folder = Path(folder)
    if not is_exported_model(folder):
        raise FileNotFoundError(f"{folder} is not an exported Eidos model (no {INFO_FILE})")
    info = json.loads((folder / INFO_FILE).read_text())
    encoders = EncodersConfig(codec=info["codec"], text=info["text_encoder"], text_max_length=info["text_max_length"])
    transformer = MaskDiT.from_pretrained(folder / "transformer").to(device).eval()
    codec = PixelCodec.from_pretrained(folder / "codec").to(device).eval()
    return ExportedModel(transformer, codec, build_text_encoder(encoders, device), info["resolution"])
