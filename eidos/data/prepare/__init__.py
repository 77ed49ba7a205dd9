"""The offline steps behind `eidos data`, run once before training: download a URL list (img2dataset), write
webdataset shards (from an image folder, a Hugging Face dataset or the OpenMoji set), encode shards into HDF5
caches. Imports from `eidos.data` (the cache writer, image decoding); `eidos.data` never imports this package."""
