"""Webdataset shards in img2dataset's layout ({key}.jpg|png + {key}.txt + {key}.json), so every data source
(an img2dataset download, a folder of images, the embedded OpenMoji set) enters through the same door.

Bad samples never stop a run: an undecodable image (a decompression bomb included), a missing or empty caption
or a caption file that is not UTF-8 is skipped and counted by reason; images in other modes (grey, CMYK,
palette, alpha) are converted to RGB by the encode step.

Keys are what webdataset groups a sample's files by, up to the first dot of a member name: they must hold no dot
and no slash, and be unique. An image folder's samples are keyed by their number (`000000012`); the file's path
relative to the folder is kept in the sample's .json as "file".
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

from eidos.data.images import IMAGE_ERRORS, UnusableSample

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

    Items may be (reason, name) tuples for samples a source already rejected; they are counted, not written.
    A tar is always closed (terminated) whatever stops the writing.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ShardReport()
    keys: set[str] = set()
    writer = None
    try:
        for sample in samples:
            if isinstance(sample, tuple):
                reason, name = sample
                report.skipped[reason] += 1
                logger.warning("skipped %s: %s", name, reason)
                continue
            check_key(sample.key, keys)
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
    finally:
        if writer is not None:
            writer.close()
    return report


def check_key(key: str, seen: set[str]) -> None:
    """Refuse a key webdataset would split (a dot), nest (a slash) or merge with another sample (a repeat)."""
    if not key or "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} must be non-empty, without '.' (webdataset splits keys at the first "
                         "dot) and without '/'")
    if key in seen:
        raise ValueError(f"sample key {key!r} is used twice; webdataset would merge the two samples")
    seen.add(key)


def checked_image(data: bytes) -> tuple[bytes, str]:
    """(bytes to store, extension) of a decodable encoded image (UnusableSample if it is not). JPEG and PNG
    files are kept byte for byte; other formats are re-encoded as PNG."""
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
    except IMAGE_ERRORS as error:
        raise UnusableSample("undecodable image") from error


def read_captions(captions_file: Path) -> dict[str, str]:
    """file name -> caption from a csv (columns file/image and caption/text) or jsonl (same keys)."""
    if captions_file.suffix not in (".jsonl", ".csv", ".tsv"):
        raise ValueError(f"captions file {captions_file} must be .csv, .tsv or .jsonl")
    try:
        text = captions_file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        line = captions_file.read_bytes()[: error.start].count(b"\n") + 1
        raise ValueError(f"captions file {captions_file} is not UTF-8 text (line {line}); save it as UTF-8") from None
    if captions_file.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"captions file {captions_file} line {number} is not JSON ({error})") from None
    else:
        rows = list(csv.DictReader(io.StringIO(text, newline=""),
                                   delimiter="\t" if captions_file.suffix == ".tsv" else ","))
    captions = {}
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise ValueError(f"{captions_file} row {number} is not an object with file and caption: {row!r}")
        name, caption = row.get("file") or row.get("image"), row.get("caption") or row.get("text")
        if name is None:
            raise ValueError(f"{captions_file} row {number} has no 'file' (or 'image') column: {row}")
        captions[Path(str(name)).name] = "" if caption is None else str(caption)
    return captions


def image_folder_samples(images: str | Path, captions_file: str | Path | None = None) -> Iterator:
    """Samples from an image folder (recursive): captions from sidecar {stem}.txt files or a captions file.

    The n-th image in path order is keyed `f"{n:09d}"`; rejected ones are (reason, path) tuples.
    """
    images = Path(images)
    if not images.is_dir():
        raise FileNotFoundError(f"image folder {images} does not exist")
    captions = read_captions(Path(captions_file)) if captions_file else None
    paths = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    for number, path in enumerate(paths):
        if captions is not None:
            caption = captions.get(path.name, "")
        else:
            caption = _sidecar_caption(path.with_suffix(".txt"))
            if caption is None:
                yield ("caption file is not UTF-8 text", str(path.with_suffix(".txt")))
                continue
        if not caption.strip():
            yield ("missing or empty caption", str(path))
            continue
        try:
            data, extension = checked_image(path.read_bytes())
        except UnusableSample as problem:
            yield (str(problem), str(path))
            continue
        relative = path.relative_to(images).as_posix()
        yield ShardSample(f"{number:09d}", data, extension, caption.strip(), {"file": relative, "source": str(path)})


def _sidecar_caption(path: Path) -> str | None:
    """The caption in sidecar `path` ("" when there is none), or None when it is not UTF-8."""
    if not path.is_file():
        return ""
    try:
        return path.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError:
        return None


def openmoji_samples(items) -> Iterator[ShardSample]:
    """OpenMoji emoji (from `openmoji_set.list_emoji`) as 128 px PNG samples (key = OpenMoji code, CLDR caption)."""
    from eidos.data import openmoji_set

    for item in items:
        array = openmoji_set.render([item], openmoji_set.RENDER_SIZE)[0]
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        yield ShardSample(item.key, buffer.getvalue(), "png", item.caption, {"base_key": item.base_key})
