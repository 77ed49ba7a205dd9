"""Shards -> HDF5 caches (`eidos data encode`) -> training from the caches: the real-scale path end to end."""

import io

import numpy as np
import torch
from PIL import Image

from eidos.cli.main import main
from eidos.config import default_config_path, load_config
from eidos.data.cache import read_cache
from eidos.data.images import to_rgb_square
from eidos.training.loop import train
from tests.test_shards import make_folder


def test_modes_are_converted_and_images_centre_cropped():
    import io

    rgba = Image.new("RGBA", (40, 20), (255, 0, 0, 0))  # fully transparent red -> white
    rgba.paste((0, 0, 255, 255), (15, 5, 25, 15))  # an opaque blue square in the middle
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    out = to_rgb_square(buffer.getvalue(), 8)
    assert out.shape == (8, 8, 3) and (out[0, 0] == 255).all()  # transparent corner composited on white
    assert out[4, 4, 2] > 200 and out[4, 4, 0] < 60  # the blue square stays in the centre of the crop


def test_encode_then_train_from_the_caches(tmp_path, capsys):
    make_folder(tmp_path / "images")
    assert main(["data", "shards", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "shards"),
                 "--samples-per-shard", "3"]) == 0
    args = ["data", "encode", "--shards", str(tmp_path / "shards" / "*.tar"), "--out", str(tmp_path / "cache"),
            "--resolution", "16", "--batch-size", "2"]
    assert main(args) == 0
    assert "encoded 5 samples from 2 shard(s) (0 already done)" in capsys.readouterr().out
    files = sorted((tmp_path / "cache").glob("*.h5"))
    assert [f.name for f in files] == ["shard-00000.h5", "shard-00001.h5"]
    first = read_cache(files[0], {"codec": "pixels", "text_encoder": "minilm", "resolution": 16})
    assert first.keys == ["000000000", "000000002", "000000004"] and first.captions[0] == "red apple ☃"
    assert first.latent_mean.shape == (3, 3, 16, 16) and first.text.tokens.shape == (3, 16, 384)
    grey = first.latent_mean[2].float()
    assert torch.allclose(grey[0], grey[1], atol=1e-2) and torch.allclose(grey[1], grey[2], atol=1e-2)  # L -> RGB
    stamp = files[0].stat().st_mtime_ns
    assert main(args) == 0  # a rerun skips finished shards
    assert "encoded 0 samples from 0 shard(s) (2 already done)" in capsys.readouterr().out
    assert files[0].stat().st_mtime_ns == stamp

    run = tmp_path / "run"
    overrides = [
        "data.source=cache", f"data.train_files={tmp_path}/cache/*.h5", "data.resolution=16",
        "model.width=64", "model.depth=2", "model.heads=2", "model.decoder_width=32", "model.decoder_depth=1",
        "model.decoder_heads=2", f"train.output_dir={run}", "train.max_steps=4", "train.batch_size=4",
        "train.checkpoint_every=4", "train.sample_every=4", "train.log_every=2", "sampling.flow_steps=2",
    ]
    train(load_config(default_config_path(), overrides))
    assert (run / "checkpoint-4").is_dir() and (run / "model" / "model_index.json").exists()
    assert np.asarray(Image.open(run / "samples" / "step-0000004.png")).shape[2] == 3


def test_truncated_shards_keep_the_complete_samples_before_the_cut(tmp_path, capsys):
    import tarfile

    from eidos.data.prepare.shard_writer import ShardSample, write_shards

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buffer, "PNG")
    samples = [ShardSample(f"s{i}", buffer.getvalue(), "png", f"caption {i}") for i in range(5)]
    shard = write_shards(samples, tmp_path / "whole").shards[0]
    with tarfile.open(shard) as tar:
        members = {m.name: m for m in tar.getmembers()}  # per sample, in order: .json, .png, .txt
    data = shard.read_bytes()
    (tmp_path / "shards").mkdir()
    image = members["s3.png"]
    (tmp_path / "shards" / "mid-member.tar").write_bytes(data[: image.offset_data + image.size // 2])
    (tmp_path / "shards" / "on-a-header.tar").write_bytes(data[: members["s3.json"].offset])  # tarfile: no error
    (tmp_path / "shards" / "empty.tar").write_bytes(b"")
    assert main(["data", "encode", "--shards", str(tmp_path / "shards" / "*.tar"), "--out", str(tmp_path / "cache"),
                 "--resolution", "8"]) == 0
    out = capsys.readouterr().out
    assert "encoded 6 samples from 3 shard(s)" in out
    assert "skipped 3: truncated or corrupt tar (rest of the shard lost)" in out
    assert "no image" not in out and "caption" not in out  # the partial sample s3 is dropped, not miscounted
    for name in ("mid-member", "on-a-header"):
        cached = read_cache(tmp_path / "cache" / f"{name}.h5")
        assert cached.keys == ["s0", "s1", "s2"] and cached.captions == ["caption 0", "caption 1", "caption 2"]
    assert not (tmp_path / "cache" / "empty.h5").exists()
    assert not read_cache(tmp_path / "cache" / "mid-member.h5").attributes["complete"]  # so a rerun redoes it
    (tmp_path / "shards" / "mid-member.tar").write_bytes(data)  # the shard, downloaded again whole
    assert main(["data", "encode", "--shards", str(tmp_path / "shards" / "*.tar"), "--out", str(tmp_path / "cache"),
                 "--resolution", "8"]) == 0
    assert "encoded 8 samples from 3 shard(s)" in capsys.readouterr().out  # 5 now whole + 3 + 0, redone
    assert read_cache(tmp_path / "cache" / "mid-member.h5").keys == [f"s{i}" for i in range(5)]
    assert read_cache(tmp_path / "cache" / "mid-member.h5").attributes["complete"]


def test_each_encode_process_reads_its_shards_whole(tmp_path, monkeypatch):
    from collections import Counter

    from eidos.data.prepare.shard_encoder import read_shard
    from eidos.data.prepare.shard_writer import ShardSample, write_shards

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
    shard = write_shards([ShardSample(f"k{i}", buffer.getvalue(), "png", "c") for i in range(3)], tmp_path).shards[0]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under accelerate launch: the shard split is encode's, not webdataset's
    contents = read_shard(shard, 8, Counter())
    assert contents.keys == ["k0", "k1", "k2"] and contents.whole


def test_reading_ahead_with_decode_threads_gives_the_shards_in_order_unchanged(tmp_path):
    from collections import Counter
    from concurrent.futures import ThreadPoolExecutor

    from eidos.data.prepare.shard_encoder import read_shard, read_shards_ahead
    from eidos.data.prepare.shard_writer import image_folder_samples, write_shards

    make_folder(tmp_path / "images")
    shards = write_shards(image_folder_samples(tmp_path / "images"), tmp_path / "shards", samples_per_shard=2).shards
    plain = [read_shard(path, 16, Counter()) for path in shards]
    counted = Counter()
    ahead = list(read_shards_ahead(shards, 16, counted, threads=3))
    assert [c.path for c in ahead] == shards
    for a, b in zip(plain, ahead, strict=True):
        assert a.keys == b.keys and a.captions == b.captions and a.whole == b.whole
        assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images, strict=True))
    with ThreadPoolExecutor(2) as pool:
        assert read_shard(shards[0], 16, Counter(), pool).keys == plain[0].keys
    assert list(read_shards_ahead([], 16, Counter(), threads=2)) == []


def test_encode_redoes_a_cache_whose_shard_changed_and_names_caches_of_shards_that_are_gone(tmp_path, capsys):
    import h5py

    from eidos.data.prepare.shard_writer import ShardSample, write_shards

    def shards(captions: list[str], per_shard: int) -> None:
        samples = [ShardSample(f"{i:09d}", to_png(i), "png", c) for i, c in enumerate(captions)]
        write_shards(samples, tmp_path / "shards", samples_per_shard=per_shard)

    def to_png(seed: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
        return buffer.getvalue()

    args = ["data", "encode", "--shards", str(tmp_path / "shards" / "*.tar"), "--out", str(tmp_path / "cache"),
            "--resolution", "8"]
    shards(["a", "b", "c", "d"], per_shard=2)
    assert main(args) == 0
    capsys.readouterr()
    shards(["new a", "new b", "new c"], per_shard=3)  # regenerated: one shard now, same name as the old first one
    (tmp_path / "shards" / "shard-00001.tar").unlink()
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "encoded 3 samples from 1 shard(s) (0 already done)" in out  # the name matched, the contents did not
    assert read_cache(tmp_path / "cache" / "shard-00000.h5").captions == ["new a", "new b", "new c"]
    assert f"shard-00001.h5 was made from {tmp_path / 'shards' / 'shard-00001.tar'}, which no longer exists" in err
    assert (tmp_path / "cache" / "shard-00001.h5").exists()  # named, never deleted

    assert main(args) == 0
    assert "encoded 0 samples from 0 shard(s) (1 already done)" in capsys.readouterr().out
    for changed in ([], ["--resolution", "16"]):  # a cache from before the source record, then other settings
        if not changed:
            with h5py.File(tmp_path / "cache" / "shard-00000.h5", "a") as f:
                del f.attrs["source_mtime_ns"]
        assert main([*args, *changed]) == 0
        assert "encoded 3 samples from 1 shard(s) (0 already done)" in capsys.readouterr().out


def test_each_distinct_caption_of_a_shard_is_encoded_once_with_the_per_sample_rows(tmp_path, monkeypatch):
    from eidos.data.prepare.shard_encoder import encode_distinct_captions
    from eidos.encoders.text import TextEncoder, load_text_encoder

    rng = np.random.default_rng(0)
    captions = ["red apple", "a blue circle", "red apple", "a dog", "a blue circle", "red apple"] * 2
    for number, caption in enumerate(captions):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tmp_path / f"{number:02d}.png")
        (tmp_path / f"{number:02d}.txt").write_text(caption)
    assert main(["data", "shards", "--images", str(tmp_path), "--out", str(tmp_path / "shards"),
                 "--samples-per-shard", "6"]) == 0
    encoded_batches = []
    plain_encode = TextEncoder.encode

    def counting_encode(self, batch, *args, **kwargs):
        encoded_batches.append(list(batch))
        return plain_encode(self, batch, *args, **kwargs)

    monkeypatch.setattr(TextEncoder, "encode", counting_encode)
    assert main(["data", "encode", "--shards", str(tmp_path / "shards" / "*.tar"), "--out", str(tmp_path / "cache"),
                 "--resolution", "8"]) == 0
    assert encoded_batches == [["red apple", "a blue circle", "a dog"]] * 2  # one call per shard, each caption once

    monkeypatch.setattr(TextEncoder, "encode", plain_encode)
    encoder = load_text_encoder("minilm", 16)
    every, once = encoder.encode(captions), encode_distinct_captions(encoder, captions)
    assert torch.equal(once.mask, every.mask)
    # Equal up to float32 rounding: a batch's size may change the GEMM's blocking and so its last bits (on an
    # Intel Xeon host 3 rows and 12 rows differ by up to 5e-6 in token features of size ~5; on an AMD EPYC not at all).
    for name in ("pooled", "tokens"):
        torch.testing.assert_close(getattr(once, name), getattr(every, name), rtol=1e-5, atol=1e-5, msg=name)
    cache = read_cache(tmp_path / "cache" / "shard-00000.h5")
    assert cache.captions == captions[:6]
    # The shard's three distinct captions, encoded as one batch of three as `once` was: bit for bit, in float16.
    assert torch.equal(cache.text.tokens, once.tokens[:6].half()) and torch.equal(cache.text.mask, once.mask[:6])
    assert torch.equal(cache.text.pooled, once.pooled[:6].half())
