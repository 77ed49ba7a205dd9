"""`eidos data shards --hf-dataset`: a parquet file, an imagefolder with metadata.jsonl and a save_to_disk folder of
the same images give the same shards as the image folder, bad rows counted; clear errors before any work."""

import io
import json
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from eidos.cli.main import main
from eidos.data.prepare.hf_dataset import hf_dataset_samples, open_rows
from eidos.data.prepare.shard_writer import IMAGE_SUFFIXES, image_folder_samples, write_shards
from tests.test_shards import make_folder

datasets = pytest.importorskip("datasets")


def folder_rows(images):
    """(relative path, file bytes, caption) of every image of the folder, in the folder path's order."""
    paths = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    captions = [p.with_suffix(".txt").read_text().strip() if p.with_suffix(".txt").exists() else "" for p in paths]
    return [(p.relative_to(images).as_posix(), p.read_bytes(), c) for p, c in zip(paths, captions, strict=True)]


def write_parquet(rows, path):
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    table = {"image": [{"bytes": data, "path": name} for name, data, _ in rows], "text": [c for *_, c in rows]}
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(path))


def write_imagefolder(rows, folder):
    for name, data, _ in rows:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    lines = [json.dumps({"file_name": name, "text": caption}) for name, _, caption in rows]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def shard_contents(report):
    """[(shard name, key, caption, extension, image bytes, pixels)] of every sample, in shard order."""
    found = []
    for path in report.shards:
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for key in sorted({name.split(".")[0] for name in members}):
            extension = next(n.split(".", 1)[1] for n in members if n.startswith(key) and n[-3:] in ("jpg", "png"))
            data = members[f"{key}.{extension}"]
            pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            found.append((path.name, key, members[f"{key}.txt"].decode(), extension, data, pixels))
    return found


def assert_same_shards(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x[:5] == y[:5] and np.array_equal(x[5], y[5])


def test_parquet_imagefolder_and_saved_dataset_give_the_folders_shards(tmp_path):
    make_folder(tmp_path / "images")  # 5 good images (png, jpg in a subfolder, grey, CMYK, webp) and 4 bad ones
    rows = folder_rows(tmp_path / "images")
    folder = write_shards(image_folder_samples(tmp_path / "images"), tmp_path / "from_folder", samples_per_shard=2)
    expected = shard_contents(folder)
    assert folder.written == 5 and folder.skipped == {"undecodable image": 2, "missing or empty caption": 2}

    write_parquet(rows, tmp_path / "set.parquet")
    write_imagefolder(rows, tmp_path / "imagefolder")
    saved = datasets.load_dataset("parquet", data_files=str(tmp_path / "set.parquet"))  # a DatasetDict
    saved.save_to_disk(str(tmp_path / "saved"))
    for number, source in enumerate(("set.parquet", "*.parquet", "imagefolder", "saved")):
        report = write_shards(hf_dataset_samples(str(tmp_path / source)), tmp_path / f"out-{number}", 2)
        assert report.skipped == folder.skipped, source
        assert_same_shards(shard_contents(report), expected)
        assert isinstance(open_rows(str(tmp_path / source), "train"), datasets.IterableDataset)  # streamed


def test_cli_counts_bad_rows_and_other_column_names(tmp_path, capsys):
    image = Image.fromarray(np.full((8, 8, 3), 200, np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    good = {"bytes": buffer.getvalue(), "path": None}
    table = {"picture": [good, {"bytes": b"not an image", "path": None}, good, None, good],
             "caption": ["a grey square", "broken", "  ", "no image", None]}
    features = datasets.Features({"picture": datasets.Image(), "caption": datasets.Value("string")})
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(tmp_path / "d.parquet"))
    assert main(["data", "shards", "--hf-dataset", str(tmp_path / "d.parquet"), "--image-column", "picture",
                 "--caption-column", "caption", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "wrote 1 samples in 1 shard(s)" in out
    assert "skipped 2: missing or empty caption" in out and "skipped 1: undecodable image" in out
    assert "skipped 1: no image" in out


def test_clear_errors_before_any_shard_is_written(tmp_path, capsys, monkeypatch):
    make_folder(tmp_path / "images")
    write_parquet(folder_rows(tmp_path / "images"), tmp_path / "set.parquet")
    out = tmp_path / "out"
    source = ["data", "shards", "--hf-dataset", str(tmp_path / "set.parquet"), "--out", str(out)]

    assert main([*source, "--caption-column", "caption"]) == 2
    error = capsys.readouterr().err
    assert "has no column 'caption' (--caption-column); its columns are: image, text" in error
    assert main([*source, "--split", "test"]) == 2
    assert "Bad split: test. Available splits: ['train']" in capsys.readouterr().err
    assert main(["data", "shards", "--images", str(tmp_path / "images"), "--split", "x", "--out", str(out)]) == 2
    assert "--split goes with --hf-dataset" in capsys.readouterr().err

    assert main(["data", "shards", "--hf-dataset", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert f"{str(tmp_path / 'nothing')!r}: no such file or folder" in capsys.readouterr().err  # not tried as a hub id
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 does: fails at once
    assert main(["data", "shards", "--hf-dataset", "someone/no-such-set", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "'someone/no-such-set' is not a local file or folder and could not be read from the hub" in error
    assert len(error.strip().splitlines()) == 1

    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    assert main(source) == 2
    assert "pip install 'eidos[hf]'" in capsys.readouterr().err
    assert not out.exists()


def test_an_imagefolder_file_gone_after_listing_is_counted(tmp_path):
    make_folder(tmp_path / "images")
    write_imagefolder(folder_rows(tmp_path / "images"), tmp_path / "imagefolder")
    samples = hf_dataset_samples(str(tmp_path / "imagefolder"))  # lists the files
    (tmp_path / "imagefolder" / "a.png").unlink()
    report = write_shards(samples, tmp_path / "out")
    assert report.written == 4 and report.skipped["unreadable image file"] == 1
