"""Where a config's encoded sets come from: the embedded OpenMoji cache (built on first use) or the HDF5 cache
files named by data.train_files / data.held_out_files. Shared by training and evaluation."""

from __future__ import annotations

import glob
import os
from contextlib import nullcontext
from pathlib import Path

from eidos.config import Config, DataConfig
from eidos.data.cache import EncodedSet, cache_attributes, concat_sets, read_cache
from eidos.data.openmoji_cache import prepare_openmoji
from eidos.data.streamed_cache import StreamedCache


def cache_files(data: DataConfig) -> tuple[list[Path], list[Path]]:
    """The training and held-out cache files named by data.train_files / data.held_out_files (globs); with
    data.source shards, train_files names shards, not caches, and only the held-out files are looked up."""
    found = {}
    for key in ("train_files", "held_out_files"):
        pattern = getattr(data, key) if key == "held_out_files" or data.source != "shards" else ""
        found[key] = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern))) if pattern else []
        if pattern and not found[key]:
            raise FileNotFoundError(f"data.{key}={pattern!r} matches no file")
    return found["train_files"], found["held_out_files"]


def load_encoded_sets(
    config: Config, codec, text_encoder, build_guard=nullcontext
) -> tuple[EncodedSet | StreamedCache, EncodedSet | None]:
    """(training set, held-out set or None), checked against the config's encoders and resolution. The training
    set is read into memory, or streamed from its files with data.in_memory: false; the held-out set (sample
    grids, evaluation) is always read into memory. `build_guard()` wraps building the OpenMoji cache (the trainer
    passes main_process_first)."""
    if config.data.source == "shards":
        raise ValueError("data.source=shards streams its shards through the trainer only; encode them into HDF5 "
                         "caches (eidos data encode) for this")
    if config.data.source == "openmoji":
        with build_guard():
            paths = prepare_openmoji(config.data, config.encoders, codec, text_encoder)
        train_files, held_out_files = [paths["train"]], [paths["held_out"]]
    else:
        train_files, held_out_files = cache_files(config.data)
    expected = cache_attributes(config.data, config.encoders)
    train_set = read_sets(train_files, expected) if config.data.in_memory else StreamedCache(train_files, expected)
    return train_set, read_sets(held_out_files, expected)


def read_sets(paths: list[Path], expected: dict) -> EncodedSet | None:
    """Cache files read into memory as one set (None for no files), checked against `expected`."""
    return concat_sets([read_cache(path, expected) for path in paths]) if paths else None
