"""Where a config's encoded sets come from: the embedded OpenMoji cache (built on first use), the HDF5 cache
files named by data.train_files / data.held_out_files, or (for training only) webdataset shards. Shared by
training and evaluation."""

from __future__ import annotations

import glob
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from eidos.config import Config, DataConfig
from eidos.data.cache import EncodedSet, cache_attributes, concat_sets, read_cache
from eidos.data.openmoji_cache import prepare_openmoji
from eidos.data.streamed_cache import StreamedCache
from eidos.data.streamed_shards import shard_urls


@dataclass(frozen=True)
class DataFiles:
    """The files a data config names, found before any model loads (so a glob that matches nothing fails first).
    `train`: HDF5 cache files, or shard URLs for data.source shards; empty for OpenMoji, whose cache is built on
    first use. `held_out`: HDF5 cache files (possibly none)."""

    train: list[str]
    held_out: list[Path]


def find_files(data: DataConfig) -> DataFiles:
    """The files named by data.train_files / data.held_out_files; a pattern that matches nothing is an error."""
    if data.source == "openmoji":
        return DataFiles([], [])
    if data.source == "shards":
        train = shard_urls(data.train_files)
    else:
        train = [str(path) for path in _glob(data.train_files, "train_files")]
    return DataFiles(train, _glob(data.held_out_files, "held_out_files"))


def _glob(pattern: str, key: str) -> list[Path]:
    found = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern))) if pattern else []
    if pattern and not found:
        raise FileNotFoundError(f"data.{key}={pattern!r} matches no file")
    return found


def load_encoded_sets(
    config: Config, codec, text_encoder, build_guard=nullcontext, files: DataFiles | None = None,
) -> tuple[EncodedSet | StreamedCache, EncodedSet | None]:
    """(training set, held-out set or None), checked against the config's encoders and resolution. The training
    set is read into memory, or streamed from its cache files with data.in_memory: false; the held-out set (sample
    grids, evaluation) is always read into memory. `build_guard()` wraps building the OpenMoji cache (the trainer
    passes main_process_first); `files` are the config's files when already found."""
    if config.data.source == "shards":
        raise ValueError("data.source=shards streams its shards through the trainer only; encode them into HDF5 "
                         "caches (eidos data encode) for this")
    if config.data.source == "openmoji":
        with build_guard():
            paths = prepare_openmoji(config.data, config.encoders, codec, text_encoder)
        train_files, held_out_files = [paths["train"]], [paths["held_out"]]
    else:
        files = files or find_files(config.data)
        train_files, held_out_files = [Path(name) for name in files.train], files.held_out
    expected = cache_attributes(config.data, config.encoders)
    streamed = config.data.source == "cache" and not config.data.in_memory
    train_set = StreamedCache(train_files, expected) if streamed else read_sets(train_files, expected)
    return train_set, read_sets(held_out_files, expected)


def read_sets(paths: list[Path], expected: dict) -> EncodedSet | None:
    """Cache files read into memory as one set (None for no files), checked against `expected`."""
    return concat_sets([read_cache(path, expected) for path in paths]) if paths else None
