"""Shard samples from a Hugging Face `datasets` dataset: parquet files, an `imagefolder` with `metadata.jsonl`, a
`save_to_disk` folder or a hub id, read through the real `datasets` library (the optional extra `eidos[hf]`).

Rows are streamed, never loaded whole: `load_dataset(..., streaming=True)` for files, folders and hub ids, and a
`save_to_disk` folder (memory-mapped Arrow) iterated as an IterableDataset. Decoding is switched off so images
arrive as their encoded bytes (or a path to them): they pass the folder path's checks (`shards.checked_image`)
and are stored the same way, so a dataset and the folder of the same images give the same shards. The n-th row
is keyed `f"{n:09d}"`, as the n-th image of a folder is; rejected rows are (reason, row) tuples.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from eidos.data.images import UnusableSample
from eidos.data.prepare.shard_writer import ShardSample, checked_image

INSTALL_HINT = "pip install 'eidos[hf]' (or pip install datasets)"


def hf_dataset_samples(source: str, split: str = "train", image_column: str = "image",
                       caption_column: str = "text") -> Iterator[ShardSample | tuple[str, str]]:
    """Samples of `source`'s `split`. Opening the dataset and checking its columns happen now, before any
    shard is written; the rows are then read lazily by the returned iterator."""
    rows = open_rows(source, split)
    columns = rows.column_names
    if columns is None:  # a format whose columns are only known from the data: look at the first row
        columns = list(next(iter(rows), {}))
    for column, flag in ((image_column, "--image-column"), (caption_column, "--caption-column")):
        if column not in columns:
            raise ValueError(f"Hugging Face dataset {source!r} (split {split}) has no column {column!r} ({flag}); "
                             f"its columns are: {', '.join(columns) or 'none'}")
    return _samples(rows, source, split, image_column, caption_column)


def _samples(rows, source: str, split: str, image_column: str, caption_column: str) -> Iterator:
    for number, row in enumerate(rows):
        name = f"{source} [{split}] row {number}"
        caption = row.get(caption_column)
        if caption is not None and not isinstance(caption, str):
            yield ("caption is not text", name)
            continue
        if not (caption or "").strip():
            yield ("missing or empty caption", name)
            continue
        try:
            data, file = image_bytes(row.get(image_column))
            stored, extension = checked_image(data)
        except UnusableSample as problem:
            yield (str(problem), name)
            continue
        meta = {"source": source, "split": split, "row": number, **({"file": file} if file else {})}
        yield ShardSample(f"{number:09d}", stored, extension, caption.strip(), meta)


def image_bytes(value) -> tuple[bytes, str | None]:
    """(encoded image bytes, the image's path if known) of an image cell with decoding off (UnusableSample when
    there are none): `datasets`' Image gives {"bytes", "path"} (bytes None when the file lives apart, as in an
    imagefolder), a plain parquet file may hold the bytes themselves."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    if not isinstance(value, dict) or not (value.get("bytes") or value.get("path")):
        raise UnusableSample("no image")
    path = value.get("path")
    if value.get("bytes"):
        return bytes(value["bytes"]), path
    try:
        return read_file(path), path
    except OSError as error:
        raise UnusableSample("unreadable image file") from error


def read_file(path: str) -> bytes:
    """A local file, or a remote one (an imagefolder streamed from the hub) through fsspec, as `datasets` does."""
    if Path(path).is_file():
        return Path(path).read_bytes()
    import fsspec

    with fsspec.open(path, "rb") as handle:
        return handle.read()


def open_rows(source: str, split: str):
    """`source`'s split as a `datasets.IterableDataset` with decoding off.

    A folder written by `save_to_disk` is opened with `load_from_disk`; a .parquet file (or glob) with the
    parquet builder; any other folder (parquet files, an imagefolder with metadata.jsonl) or a hub id with
    `load_dataset`, which infers the format.
    """
    try:
        import datasets
    except ImportError as error:
        raise ImportError(f"--hf-dataset needs the `datasets` library: {INSTALL_HINT}") from error

    path = Path(source).expanduser()
    local = source.startswith(("/", ".", "~")) or source.endswith("/")  # cannot be a hub id
    if local and not path.exists() and not source.endswith(".parquet"):  # (a parquet glob is checked below)
        raise FileNotFoundError(f"Hugging Face dataset {source!r}: no such file or folder")
    try:
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            rows = saved_split(datasets.load_from_disk(str(path)), split, source).to_iterable_dataset()
        elif source.endswith(".parquet"):
            if not any(path.parent.glob(path.name)):
                raise FileNotFoundError(f"Hugging Face dataset {source!r}: no such parquet file")
            rows = datasets.load_dataset("parquet", data_files=str(path), split=split, streaming=True)
        else:
            rows = datasets.load_dataset(str(path) if path.exists() else source, split=split, streaming=True)
    except ConnectionError as error:  # an id that is not a local path, and the hub is offline or unreachable
        raise ValueError(f"Hugging Face dataset {source!r} is not a local file or folder and could not be read "
                         f"from the hub ({error})") from None
    except datasets.exceptions.DatasetNotFoundError as error:
        raise ValueError(f"Hugging Face dataset {source!r} was not found: {error}") from None
    except ValueError as error:  # datasets' "Bad split: x. Available splits: [...]"
        if "split" not in str(error).lower():
            raise
        raise ValueError(f"Hugging Face dataset {source!r}: {error} (choose with --split)") from None
    return rows.decode(False)  # images as bytes/paths: checked and stored by us, as a folder's are


def saved_split(saved, split: str, source: str):
    """The `split` of what `load_from_disk` returned (a Dataset has one split, whatever it is called)."""
    if not hasattr(saved, "keys"):
        return saved
    if split not in saved:
        raise ValueError(f"Bad split: {split}. Available splits: {list(saved)}")  # worded as load_dataset's
    return saved[split]
