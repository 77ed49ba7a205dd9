"""Training rows streamed from cache files (data.in_memory: false): the same rows, the same split, the same run."""

import json

import pytest
import torch
from safetensors.torch import load_file

from eidos.batch import TextEmbeddings
from eidos.config import default_config_path, load_config
from eidos.data.batch_order import EpochOrder, Prefetcher, micro_batch_start
from eidos.data.cache import EncodedSet, cache_attributes, concat_sets, read_cache, write_cache
from eidos.data.streamed_cache import StreamedCache
from eidos.training.loop import train

SIZES = (5, 1, 7)


def run_overrides(tmp_path, in_memory: bool) -> list[str]:
    return [
        "data.source=cache", f"data.train_files={tmp_path}/cache/train-*.h5", "data.resolution=16",
        f"data.in_memory={str(in_memory).lower()}",
        "model.width=64", "model.depth=2", "model.heads=2", "model.decoder_width=32", "model.decoder_depth=1",
        "model.decoder_heads=2", f"train.output_dir={tmp_path}/run-{in_memory}", "train.max_steps=6",
        "train.batch_size=8", "train.grad_accumulation_steps=2", "train.checkpoint_every=6",
        "train.sample_every=6", "train.log_every=3", "sampling.flow_steps=0", "sampling.num_train_prompts=2",
    ]


@pytest.fixture
def cache_paths(tmp_path):
    config = load_config(default_config_path(), run_overrides(tmp_path, True))
    attributes = {**cache_attributes(config.data, config.encoders), "scaling_factor": 1.0}
    generator = torch.Generator().manual_seed(0)
    paths = []
    for k, n in enumerate(SIZES):
        text = TextEmbeddings(torch.randn(n, 384, generator=generator), torch.randn(n, 16, 384, generator=generator),
                              torch.rand(n, 16, generator=generator) < 0.7)
        encoded = EncodedSet(torch.randn(n, 3, 16, 16, generator=generator),
                             torch.full((n, 3, 16, 16), -3.0) + torch.rand(n, 3, 16, 16, generator=generator),
                             text, [f"caption {k}.{i}" for i in range(n)], [f"{k}-{i}" for i in range(n)], attributes)
        paths.append(tmp_path / "cache" / f"train-{k}.h5")
        write_cache(paths[-1], encoded)
    return paths


def assert_same_rows(a: EncodedSet, b: EncodedSet) -> None:
    assert a.captions == b.captions and a.keys == b.keys
    for name in ("latent_mean", "latent_logstd"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    for name in ("pooled", "tokens", "mask"):
        assert torch.equal(getattr(a.text, name), getattr(b.text, name))


def test_streamed_rows_equal_the_in_memory_rows(cache_paths):
    memory = concat_sets([read_cache(p) for p in cache_paths])
    streamed = StreamedCache(cache_paths)
    assert len(streamed) == len(memory) == sum(SIZES)
    assert streamed.latent_shape == memory.latent_shape == (3, 16, 16) and streamed.text_dim == memory.text_dim
    indices = torch.tensor([12, 0, 5, 5, 6, 4, 11, 0])  # every file, unsorted, repeats
    assert_same_rows(streamed.rows(indices), memory.rows(indices))
    empty = torch.tensor([], dtype=torch.long)
    assert_same_rows(streamed.rows(empty), memory.rows(empty))
    without = streamed.rows(indices, strings=False)
    assert without.captions == [] and torch.equal(without.text.tokens, memory.rows(indices).text.tokens)
    with pytest.raises(IndexError, match="out of range for 13"):
        streamed.rows(torch.tensor([13]))
    with pytest.raises(ValueError, match="resolution=16 but the config asks for resolution=32"):
        StreamedCache(cache_paths, {"resolution": 32})


def test_two_processes_stream_disjoint_rows_that_cover_the_cache_each_epoch(cache_paths):
    streamed = StreamedCache(cache_paths)
    order = EpochOrder(len(streamed), seed=3)
    world, micro = 2, 3
    keys = []
    for step in range(13):  # 13 steps x 6 samples = 6 epochs of 13 samples
        for rank in range(world):
            keys += streamed.rows(order.indices(micro_batch_start(step * world * micro, 0, rank, world, micro),
                                                micro)).keys
    for epoch in range(6):
        assert sorted(keys[epoch * 13:(epoch + 1) * 13]) == sorted(f"{k}-{i}" for k, n in enumerate(SIZES)
                                                                    for i in range(n))


def test_rows_of_other_chunk_layouts_take_the_point_selection(tmp_path):
    import h5py
    import numpy as np

    from eidos.data.streamed_cache import read_rows

    values = np.arange(5 * 3 * 2, dtype=np.float16).reshape(5, 3, 2)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("per_row", data=values, chunks=(1, 3, 2))  # our layout: raw chunk reads
        f.create_dataset("compressed", data=values, chunks=(2, 3, 2), compression="gzip")
        f.create_dataset("contiguous", data=values)
    rows = np.array([0, 2, 4])
    with h5py.File(tmp_path / "other.h5", "r") as f:
        for name in ("per_row", "compressed", "contiguous"):
            assert np.array_equal(read_rows(f[name], rows), values[rows]), name


def test_the_prefetcher_returns_what_a_direct_read_returns(cache_paths):
    streamed = StreamedCache(cache_paths)
    order = EpochOrder(len(streamed), seed=1)
    prefetcher = Prefetcher(lambda start, count: streamed.rows(order.indices(start, count), strings=False))
    try:
        for start, next_start in [(0, 4), (4, 8), (8, 12), (20, 24), (24, 4)]:  # (20, ...) was not announced
            got = prefetcher.get(start, 4, next_start)
            prefetcher._pending[1].result()  # the prefetch of next_start ends before the direct read: one reader
            assert_same_rows(got, streamed.rows(order.indices(start, 4), strings=False))
    finally:
        prefetcher.close()
    calls = []
    inline = Prefetcher(lambda start, count: calls.append(start) or start, ahead=False)  # in-memory rows
    assert [inline.get(s, 4, s + 4) for s in (0, 4, 12)] == [0, 4, 12] and calls == [0, 4, 12]
    inline.close()


def test_a_streamed_run_equals_an_in_memory_run(tmp_path, cache_paths):
    for in_memory in (True, False):
        train(load_config(default_config_path(), run_overrides(tmp_path, in_memory)))
    weights = [load_file(tmp_path / f"run-{m}" / "model" / "transformer" / "diffusion_pytorch_model.safetensors")
               for m in (True, False)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    logs = [[json.loads(line) for line in (tmp_path / f"run-{m}" / "metrics.jsonl").read_text().splitlines()]
            for m in (True, False)]
    assert [row["step"] for row in logs[0]] == [3, 6]
    assert [row["loss/total"] for row in logs[0]] == [row["loss/total"] for row in logs[1]]
