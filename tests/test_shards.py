"""Webdataset shards: readable by plain webdataset and tarfile, keys and captions intact, bad data counted."""

import io
import json
import tarfile

import numpy as np
import webdataset as wds
from PIL import Image

from eidos.cli.main import main
from eidos.data import openmoji_set
from eidos.data.prepare.shard_writer import image_folder_samples, openmoji_samples, write_shards


def save(image: Image.Image, path, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def make_folder(root):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    save(rgb, root / "a.png")
    (root / "a.txt").write_text("red apple ☃\n")
    save(rgb, root / "sub" / "b.jpg", quality=90)
    (root / "sub" / "b.txt").write_text("a photo")
    save(rgb.convert("L"), root / "grey.png")
    (root / "grey.txt").write_text("grey")
    save(rgb.convert("CMYK"), root / "cmyk.jpg")
    (root / "cmyk.txt").write_text("cmyk")
    save(rgb, root / "w.webp")
    (root / "w.txt").write_text("webp image")
    (root / "broken.jpg").write_bytes(b"not an image at all")
    (root / "broken.txt").write_text("broken")
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    (root / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "truncated.txt").write_text("truncated")
    save(rgb, root / "nocaption.png")
    save(rgb, root / "empty.png")
    (root / "empty.txt").write_text("   ")


def test_image_folder_shards_are_read_back_by_webdataset_and_tarfile(tmp_path):
    make_folder(tmp_path / "images")
    report = write_shards(image_folder_samples(tmp_path / "images"), tmp_path / "shards", samples_per_shard=2)
    assert report.written == 5 and len(report.shards) == 3
    assert report.skipped == {"undecodable image": 2, "missing or empty caption": 2}

    dataset = wds.WebDataset([str(p) for p in report.shards], shardshuffle=False).decode("pil")
    read = {s["json"]["file"]: s for s in dataset}  # keyed by number; the file's path is in the .json
    assert set(read) == {"a.png", "sub/b.jpg", "grey.png", "cmyk.jpg", "w.webp"}
    assert read["a.png"]["txt"] == "red apple ☃" and read["sub/b.jpg"]["txt"] == "a photo"
    assert read["a.png"]["png"].size == (32, 32) and "jpg" in read["sub/b.jpg"] and "png" in read["w.webp"]
    assert read["a.png"]["json"]["caption"] == "red apple ☃" and read["a.png"]["__key__"] == "000000000"
    with tarfile.open(report.shards[0]) as tar:  # plain tarfile: the first two samples in path order
        names = sorted(tar.getnames())
        caption = tar.extractfile("000000000.txt").read().decode()
    assert names == ["000000000.json", "000000000.png", "000000000.txt", "000000002.jpg", "000000002.json",
                     "000000002.txt"]  # a.png and cmyk.jpg (broken.jpg, number 1, was skipped)
    assert caption == "red apple ☃"


def test_captions_file(tmp_path):
    make_folder(tmp_path / "images")
    (tmp_path / "captions.jsonl").write_text(
        json.dumps({"file": "a.png", "caption": "from jsonl"}) + "\n" + json.dumps({"image": "b.jpg", "text": "b"}))
    report = write_shards(image_folder_samples(tmp_path / "images", tmp_path / "captions.jsonl"), tmp_path / "s")
    dataset = wds.WebDataset([str(p) for p in report.shards], shardshuffle=False).decode()
    assert {s["json"]["file"]: s["txt"] for s in dataset} == {"a.png": "from jsonl", "sub/b.jpg": "b"}
    assert report.skipped["missing or empty caption"] == 7  # everything the file does not name, broken included


def test_openmoji_shards_keep_keys_and_captions(tmp_path):
    items, _ = openmoji_set.list_emoji("drop")
    chosen = [e for e in items if e.key in ("1F34E", "1F1E9-1F1EA", "2764")]
    report = write_shards(openmoji_samples(chosen), tmp_path)
    read = {s["__key__"]: s for s in wds.WebDataset([str(p) for p in report.shards], shardshuffle=False).decode("pil")}
    assert {k: s["txt"] for k, s in read.items()} == {e.key: e.caption for e in chosen}
    assert read["1F34E"]["txt"] == "red apple" and read["1F34E"]["png"].size == (128, 128)


def test_cli(tmp_path, capsys):
    make_folder(tmp_path / "images")
    assert main(["data", "shards", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "wrote 5 samples in 1 shard(s)" in out and "skipped 2: undecodable image" in out
    assert main(["data", "shards", "--images", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
