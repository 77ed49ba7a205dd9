"""Data: the batch type (and, later, OpenMoji, webdataset shards and the HDF5 cache)."""

from eidos.data.batch import Batch, TextEmbeddings

__all__ = ["Batch", "TextEmbeddings"]
