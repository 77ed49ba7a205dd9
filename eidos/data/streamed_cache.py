"""Cache files read row by row on demand, for training sets larger than memory (data.in_memory: false).

Row i is row i of the files' concatenation, exactly as in memory, so the sample order, the per-process split and
exact resume do not depend on where the rows live. Each process opens the files once (lazily, so a forked or
spawned process opens its own handles) and reads only the rows of its own micro-batches; the trainer reads the
next micro-batch in a background thread while the current one computes (`batch_order.Prefetcher`).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from eidos.batch import TextEmbeddings
from eidos.data.cache import EncodedSet, checked_attributes, decode_strings, open_cache

_ARRAYS = ("latent_mean", "latent_logstd", "text_pooled", "text_tokens", "text_mask")


def read_rows(dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Rows `rows` (increasing, unique) of a dataset. Our caches store one row per chunk without filters; each
    row is then one raw chunk read, 40x faster than h5py's point selection (BENCHMARKS.md). Other layouts take
    the point selection."""
    shape = dataset.shape[1:]
    if dataset.chunks != (1, *shape) or dataset.id.get_create_plist().get_nfilters() != 0:
        return dataset[rows]
    out = np.empty((len(rows), *shape), dtype=dataset.dtype)
    origin = (0,) * len(shape)
    for position, row in enumerate(rows.tolist()):
        _, raw = dataset.id.read_direct_chunk((row, *origin))
        out[position] = np.frombuffer(raw, dtype=dataset.dtype).reshape(shape)
    return out


class StreamedCache:
    """The same interface as an in-memory `EncodedSet` for training: len, latent_shape, text_dim, rows(indices)."""

    def __init__(self, paths: list[Path], expected: dict | None = None):
        if not paths:
            raise ValueError("no cache files to stream")
        self.paths = [Path(p) for p in paths]
        counts, shapes = [], set()
        for path in self.paths:
            with open_cache(path) as f:
                self.attributes = checked_attributes(f, path, expected)
                counts.append(len(f["latent_mean"]))
                shapes.add((f["latent_mean"].shape[1:], f["text_pooled"].shape[1]))
        if len(shapes) > 1:
            raise ValueError(f"cache files disagree on latent/text shapes {sorted(shapes)}: {self.paths}")
        (latent_shape, self.text_dim), = shapes
        self.latent_shape = tuple(latent_shape)
        self.offsets = np.cumsum([0, *counts])  # file k holds rows offsets[k] .. offsets[k+1] - 1
        self._files: list[h5py.File] | None = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _open(self) -> list[h5py.File]:
        if self._files is None:
            self._files = [h5py.File(path, "r") for path in self.paths]
        return self._files

    def rows(self, indices: torch.Tensor, strings: bool = True) -> EncodedSet:
        """The samples at `indices` (any order, repeats allowed), read from their files; strings=False leaves
        captions and keys empty (the training step needs none)."""
        wanted = indices.numpy().astype(np.int64)
        if len(wanted) and (wanted.min() < 0 or wanted.max() >= len(self)):
            raise IndexError(f"rows {wanted.min()}..{wanted.max()} out of range for {len(self)} cached samples")
        files = self._open()
        which = np.searchsorted(self.offsets, wanted, side="right") - 1
        columns = {name: files[0][name][:0] for name in _ARRAYS} if len(wanted) == 0 else {}
        texts: dict[str, list] = {name: [None] * len(wanted) if strings else [] for name in ("caption", "key")}
        for k in np.unique(which):
            where = np.flatnonzero(which == k)
            # h5py reads a point selection in increasing order without repeats
            local, inverse = np.unique(wanted[where] - self.offsets[k], return_inverse=True)
            for name in _ARRAYS:
                block = read_rows(files[k][name], local)
                if name not in columns:
                    columns[name] = np.empty((len(wanted), *block.shape[1:]), dtype=block.dtype)
                columns[name][where] = block[inverse]
            for name in texts if strings else ():
                values = decode_strings(files[k][name][local])
                for position, row in zip(where.tolist(), inverse.tolist(), strict=True):
                    texts[name][position] = values[row]
        tensor = {name: torch.from_numpy(array) for name, array in columns.items()}
        return EncodedSet(tensor["latent_mean"], tensor["latent_logstd"],
                          TextEmbeddings(tensor["text_pooled"], tensor["text_tokens"], tensor["text_mask"]),
                          texts["caption"], texts["key"], self.attributes)

    def close(self) -> None:
        for f in self._files or []:
            f.close()
        self._files = None
