"""Data: the embedded OpenMoji set, webdataset shards, the HDF5 cache and the resumable loader (the batch types
live in `eidos.batch`)."""
