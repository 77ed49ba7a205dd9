"""Data read during training: the HDF5 cache (in memory or streamed), webdataset shards streamed and encoded on
the fly, the embedded OpenMoji set (its cache built on first use), the resumable sample order and the sources a
config names. The offline steps behind `eidos data` live in `eidos.data.prepare`, which may import this package;
this package never imports it."""
