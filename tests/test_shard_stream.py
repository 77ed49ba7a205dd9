"""Training straight from webdataset shards (data.source: shards): the resampled stream, its split over
processes, bad samples, and a run that trains, exports and resumes."""

import io
import json
from collections import Counter

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from eidos.config import default_config_path, load_config
from eidos.data.streamed_shards import ShardStream, shard_urls
from eidos.training.loop import train


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def write_shard(path, samples: list[tuple[str, bytes | None, str]]) -> None:
    with wds.TarWriter(str(path)) as writer:
        for key, image, caption in samples:
            sample = {"__key__": key, "txt": caption, "json": json.dumps({"caption": caption})}
            if image is not None:
                sample["png"] = image
            writer.write(sample)


@pytest.fixture
def shards(tmp_path):
    for s in range(4):
        write_shard(tmp_path / f"shard-{s}.tar", [(f"s{s}-{i}", png(10 * s + i), f"shape {s} {i}") for i in range(3)])
    return shard_urls(str(tmp_path / "shard-*.tar"))


def keys_of(stream: ShardStream, count: int) -> list[str]:
    return stream.take(count)[0]


def test_the_stream_is_seeded_and_processes_take_alternate_draws(shards, monkeypatch):
    one = keys_of(ShardStream(shards, 16, seed=5, rank=0, shuffle_buffer=1), 24)  # 8 whole shards, unshuffled
    assert one == keys_of(ShardStream(shards, 16, seed=5, rank=0, shuffle_buffer=1), 24)
    assert one != keys_of(ShardStream(shards, 16, seed=6, rank=0, shuffle_buffer=1), 24)
    draws = [one[i:i + 3] for i in range(0, 24, 3)]  # the shared sequence of shard draws, 3 samples each
    assert all(len({k.split("-")[0] for k in draw}) == 1 for draw in draws)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        mine = keys_of(ShardStream(shards, 16, seed=5, rank=rank, shuffle_buffer=1), 12)
        assert mine == [k for draw in draws[rank::2] for k in draw]  # wds.split_by_node: every other draw


def test_bad_samples_in_the_stream_are_skipped_and_counted(tmp_path):
    write_shard(tmp_path / "bad.tar", [("good", png(0), "fine"), ("broken", b"not an image", "broken"),
                                       ("silent", png(1), "  "), ("blind", None, "no image")])
    stream = ShardStream(shard_urls(str(tmp_path / "bad.tar")), 16, seed=0, rank=0, shuffle_buffer=1)
    keys, captions, images = stream.take(3)
    assert keys == ["good"] * 3 and captions == ["fine"] * 3 and images.shape == (3, 16, 16, 3)
    assert stream.skipped["undecodable image"] >= 2 and stream.skipped["missing or empty caption"] >= 2
    assert stream.skipped["no image"] >= 2
    counter = Counter({"undecodable image": 5})
    ShardStream(shard_urls(str(tmp_path / "bad.tar")), 16, seed=0, rank=0, shuffle_buffer=1, skipped=counter).take(2)
    assert counter["undecodable image"] > 5  # the trainer's summary counter is the one the stream updates
    with pytest.raises(FileNotFoundError, match="matches no shard"):
        shard_urls(str(tmp_path / "none-*.tar"))
    assert shard_urls(str(tmp_path / "{bad,none}.tar")) == [str(tmp_path / "bad.tar")]  # braces, then globs


def test_a_stream_without_any_good_sample_stops_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr("eidos.data.streamed_shards.MAX_MISSES", 50)
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file" * 100)
    write_shard(tmp_path / "blind.tar", [("blind", None, "no image")])
    for name in ("junk", "blind"):
        stream = ShardStream([str(tmp_path / f"{name}.tar")], 16, seed=0, rank=0, shuffle_buffer=1)
        with pytest.raises(RuntimeError, match="no usable sample in the last 50 reads"):
            stream.take(1)


def test_training_from_shards_encodes_on_the_fly_exports_and_resumes(tmp_path, shards):
    def overrides(steps):
        return [
            "data.source=shards", f"data.train_files={tmp_path}/shard-*.tar", "data.resolution=16",
            "data.shuffle_buffer=4", "model.width=64", "model.depth=2", "model.heads=2", "model.decoder_width=32",
            "model.decoder_depth=1", "model.decoder_heads=2", f"train.output_dir={tmp_path}/run",
            f"train.max_steps={steps}", "train.batch_size=4", "train.grad_accumulation_steps=2",
            "train.checkpoint_every=4", "train.sample_every=4", "train.log_every=2", "sampling.flow_steps=0",
            "sampling.num_train_prompts=2",
        ]

    train(load_config(default_config_path(), overrides(4)))
    run = tmp_path / "run"
    assert (run / "checkpoint-4").is_dir() and (run / "model" / "model_index.json").exists()
    assert (run / "samples" / "step-0000004.png").exists()
    train(load_config(default_config_path(), overrides(6)))  # resumes at step 4 with a fresh, seeded stream
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]
    with pytest.raises(ValueError, match="data.train_files"):
        load_config(default_config_path(), ["data.source=shards"])
