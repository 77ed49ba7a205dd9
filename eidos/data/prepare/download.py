"""A URL + caption list -> webdataset shards, by running img2dataset (DESIGN §1, §4).

img2dataset pins webdataset<0.3, which cannot be installed next to ours, so it is run as a program from its own
environment (found on PATH or named by path), never imported. Its shards ({key}.jpg + .txt + .json in
00000.tar, ...) are what `eidos data encode` reads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

INPUT_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv"}
INSTALL_HINT = (
    "img2dataset pins webdataset<0.3, so install it in its own environment:\n"
    "    python -m venv ~/.venvs/img2dataset && ~/.venvs/img2dataset/bin/pip install img2dataset\n"
    "then pass --img2dataset ~/.venvs/img2dataset/bin/img2dataset (or put that folder on PATH)"
)


def find_img2dataset(executable: str | None) -> str:
    """The img2dataset program: `executable` (a path or a name on PATH) or `img2dataset` on PATH."""
    found = shutil.which(str(Path(executable).expanduser()) if executable else "img2dataset")
    if found is None:
        named = f"--img2dataset {executable} is not an executable file" if executable else \
            "img2dataset is not on PATH"
        raise FileNotFoundError(f"{named}. {INSTALL_HINT}")
    return found


def input_format(url_list: Path) -> str:
    """img2dataset's --input_format for a URL list, from its extension."""
    suffix = url_list.suffix.lower()
    if suffix == ".txt":
        raise ValueError(f"URL list {url_list} is a .txt file: it holds URLs without captions, and `eidos data "
                         "encode` skips every sample without one; use a .parquet, .csv or .tsv file with url and "
                         "caption columns")
    if suffix not in INPUT_FORMATS:
        raise ValueError(f"URL list {url_list} has extension {suffix or '(none)'!r}; expected one of "
                         f"{', '.join(INPUT_FORMATS)} (a table with url and caption columns)")
    return INPUT_FORMATS[suffix]


def img2dataset_command(executable: str, url_list: Path, out: Path, *, url_col: str = "url",
                        caption_col: str = "caption", image_size: int = 256, processes: int = 1,
                        threads: int = 64, samples_per_shard: int = 10000) -> list[str]:
    """The img2dataset command line that writes center-cropped JPEG webdataset shards into `out`."""
    flags = {
        "url_list": url_list, "input_format": input_format(url_list), "url_col": url_col,
        "caption_col": caption_col, "output_format": "webdataset", "output_folder": out,
        "image_size": image_size, "resize_mode": "center_crop", "encode_format": "jpg", "encode_quality": 95,
        "processes_count": processes, "thread_count": threads, "number_sample_per_shard": samples_per_shard,
        "enable_wandb": False,
    }
    return [executable, *(part for name, value in flags.items() for part in (f"--{name}", str(value)))]


def downloaded(out: Path) -> tuple[list[Path], int | None]:
    """The shards in `out` and the images img2dataset reports as written (from its *_stats.json, if any)."""
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))]
    successes = sum(s.get("successes", 0) for s in stats) if stats else None
    return sorted(out.glob("*.tar")), successes
