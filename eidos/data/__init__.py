"""Data: the batch types, the embedded OpenMoji set, the HDF5 cache and the resumable loader."""

from eidos.data.batch import Batch, TextEmbeddings

__all__ = ["Batch", "TextEmbeddings"]
