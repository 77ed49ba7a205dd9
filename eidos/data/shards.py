"""Webdataset shards in img2dataset's layout ({key}.jpg|png + {key}.txt + {key}.json), so every data source
(an img2dataset download, a folder of images, the embedded OpenMoji set) enters through the same door.

Bad samples never stop a run: an undecodable image or a missing/empty caption is skipped and counted by
reason; images in other modes (grey, CMYK, palette, alpha) are converted to RGB by the encode step.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds
from PIL import Image

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class ShardSample:
    key: str
    image: bytes  # encoded file content
    extension: str  # "jpg" or "png" (webp/bmp are re-encoded to png)
    caption: str
    meta: dict = field(default_factory=dict)


@dataclass
class ShardReport:
    written: int = 0
    shards: list[Path] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def write_shards(samples: Iterable[ShardSample | tuple[str, str]], out_dir: str | Path, samples_per_shard: int = 1000,
                 prefix: str = "shard") -> ShardReport:
    """Write `samples` into out_dir/{prefix}-00000.tar, ... with webdataset's TarWriter.

    Items may be (reason, key) tuples for samples a source already rejected; they are counted, not written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ShardReport()
    writer = None
    for sample in samples:
        if isinstance(sample, tuple):
            reason, key = sample
            report.skipped[reason] += 1
            logger.warning("skipped %s: %s", key, reason)
            continue
        if report.written % samples_per_shard == 0:
            if writer is not None:
                writer.close()
            path = out_dir / f"{prefix}-{len(report.shards):05d}.tar"
            writer = wds.TarWriter(str(path))
            report.shards.append(path)
        meta = {"key": sample.key, "caption": sample.caption, **sample.meta}
        writer.write({"__key__": sample.key, sample.extension: sample.image, "txt": sample.caption,
                      "json": json.dumps(meta).encode()})
        report.written += 1
    if writer is not None:
        writer.close()
    return report


def _checked_image(path: Path) -> tuple[bytes, str] | str:
    """(file bytes, extension) of a decodable image, or the reason it is not usable."""
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes the pixels: catches truncated files that verify() lets through
            fmt = image.format
            if fmt == "JPEG":
                return data, "jpg"
            if fmt == "PNG":
                return data, "png"
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return buffer.getvalue(), "png"
    except (OSError, SyntaxError, ValueError):
        return "undecodable image"


def read_captions(captions_file: Path) -> dict[str, str]:
    """file name -> caption from a csv (columns file/image and caption/text) or jsonl (same keys)."""
    rows: list[dict] = []
    if captions_file.suffix == ".jsonl":
        rows = [json.loads(line) for line in captions_file.read_text().splitlines() if line.strip()]
    elif captions_file.suffix in (".csv", ".tsv"):
        with open(captions_file, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t" if captions_file.suffix == ".tsv" else ","))
    else:
        raise ValueError(f"captions file {captions_file} must be .csv, .tsv or .jsonl")
    captions = {}
    for number, row in enumerate(rows, start=1):
        name, caption = row.get("file") or row.get("image"), row.get("caption") or row.get("text")
        if name is None:
            raise ValueError(f"{captions_file} row {number} has no 'file' (or 'image') column: {row}")
        captions[Path(name).name] = caption or ""
    return captions


def image_folder_samples(images: str | Path, captions_file: str | Path | None = None) -> Iterator:
    """Samples from an image folder (recursive): captions from sidecar {stem}.txt files or a captions file."""
    images = Path(images)
    if not images.is_dir():
        raise FileNotFoundError(f"image folder {images} does not exist")
    captions = read_captions(Path(captions_file)) if captions_file else None
    for path in sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        key = path.relative_to(images).with_suffix("").as_posix().replace("/", "_")
        if captions is not None:
            caption = captions.get(path.name, "")
        else:
            sidecar = path.with_suffix(".txt")
            caption = sidecar.read_text().strip() if sidecar.exists() else ""
        if not caption.strip():
            yield ("missing or empty caption", key)
            continue
        checked = _checked_image(path)
        if isinstance(checked, str):
            yield (checked, key)
            continue
        data, extension = checked
        yield ShardSample(key, data, extension, caption.strip(), {"source": str(path)})


def openmoji_samples(items) -> Iterator[ShardSample]:
    """OpenMoji emoji (from `openmoji.list_emoji`) as 128 px PNG samples (key = OpenMoji code, CLDR caption)."""
    from eidos.data import openmoji

    for item in items:
        array = openmoji.render([item], openmoji.RENDER_SIZE)[0]
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        yield ShardSample(item.key, buffer.getvalue(), "png", item.caption, {"base_key": item.base_key})
