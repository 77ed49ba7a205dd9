"""Data loading and encoding throughput on CPU: does the data path keep up with the trainer?

(a) Batch assembly from HDF5 caches as the trainer does it: the cache files are read into memory once
(read_cache + concat_sets), or streamed (StreamedCache: each batch's rows read from the files), then every
step takes EpochOrder.indices + gather + EncodedBatch.sample. The trainer reads the next batch in a background
thread while a step computes, so the batch time is hidden as long as it is shorter than the step. Synthetic
caches are written with the real cache writer at the embedded default's shapes (3 x 32 x 32 pixels, MiniLM
16 x 384 tokens, batch 64) and XL/2's (4 x 32 x 32 SDXL latents, CLIP 77 x 768 tokens, batch 128). The load
time is of files just written (in the OS page cache); a cold disk adds its read time.
(b) `eidos data encode`'s CPU stages: JPEG decode + centre crop + Lanczos resize (to_rgb_square) to 256 px, and
the whole command on OpenMoji shards (pixels codec + MiniLM at 32 px); and the decode side of training straight
from the shards (data.source=shards), whose encoding then runs on the training device every step.

    python -m benchmarks.loader
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import machine, median_seconds, print_table
from eidos.batch import TextEmbeddings
from eidos.data.batch_order import EpochOrder, gather
from eidos.data.cache import EncodedSet, concat_sets, read_cache, write_cache
from eidos.data.images import to_rgb_square
from eidos.data.prepare.shard_encoder import read_shard
from eidos.data.streamed_cache import StreamedCache
from eidos.data.streamed_shards import ShardStream

CPU = torch.device("cpu")
# Trainer consumption in samples/s, from BENCHMARKS.md: the embedded default on our 2-core CPU (masked stage),
# XL/2 at batch 128 on one H200 (eager and compiled, mask 0.5).
SHAPES = {
    "default (3x32x32, MiniLM 16x384)": dict(latent=(3, 32, 32), tokens=16, dim=384, batch=64,
                                             trainer_rates=(85,), trainer_on="2-core CPU"),
    "XL/2 (4x32x32, CLIP 77x768)": dict(latent=(4, 32, 32), tokens=77, dim=768, batch=128,
                                        trainer_rates=(591, 757), trainer_on="H200"),
}


def synthetic_set(count: int, latent: tuple, tokens: int, dim: int, seed: int) -> EncodedSet:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, tokens + 1, (count, 1), generator=generator)
    text = TextEmbeddings(torch.randn(count, dim, generator=generator),
                          torch.randn(count, tokens, dim, generator=generator),
                          torch.arange(tokens) < lengths)  # (count, tokens): real tokens first
    return EncodedSet(torch.randn(count, *latent, generator=generator), torch.randn(count, *latent) - 3, text,
                      [f"caption {i}" for i in range(count)], [f"{seed:05d}{i:04d}" for i in range(count)],
                      {"codec": "synthetic", "text_encoder": "synthetic"})


def resident_bytes(data: EncodedSet) -> int:
    """Bytes of the tensors an in-memory set holds."""
    tensors = (data.latent_mean, data.latent_logstd, data.text.pooled, data.text.tokens, data.text.mask)
    return sum(t.numel() * t.element_size() for t in tensors)


def bench_cache(name: str, spec: dict, folder: Path, files: int, per_file: int, repeats: int) -> list[list]:
    paths = []
    for index in range(files):
        paths.append(folder / f"{index:05d}.h5")
        write_cache(paths[-1], synthetic_set(per_file, spec["latent"], spec["tokens"], spec["dim"], index))
    return [bench_source(name, "in memory", spec, lambda: concat_sets([read_cache(path) for path in paths]),
                         repeats),
            bench_source(name, "streamed", spec, lambda: StreamedCache(paths), repeats)]


def bench_source(name: str, mode: str, spec: dict, load, repeats: int) -> list:
    start = time.perf_counter()
    data = load()
    load_seconds = time.perf_counter() - start
    order, batch, position = EpochOrder(len(data), seed=0), spec["batch"], [0]
    generator = torch.Generator().manual_seed(0)

    def step():
        gather(data, order.indices(position[0], batch), CPU).sample(generator)
        position[0] += batch

    seconds = median_seconds(step, CPU, repeats)
    per_sample = resident_bytes(data.rows(torch.arange(batch))) / batch  # bytes of one sample's row
    resident = f"{resident_bytes(data) / 2**20:.0f}" if isinstance(data, EncodedSet) else "0 (one batch)"
    rates = spec["trainer_rates"]
    step_shares = "-".join(f"{100 * seconds * rate / batch:.1f}" for rate in rates)  # loader ms / trainer step ms
    return [name, mode, batch, len(data), f"{load_seconds:.2f}", resident, f"{per_sample / 2**10:.1f}",
            f"{seconds * 1000:.2f}", f"{batch / seconds:.0f}", f"{'-'.join(map(str, rates))} ({spec['trainer_on']})",
            f"{step_shares}%"]


def synthetic_jpegs(count: int, size: tuple[int, int], seed: int = 0) -> list[bytes]:
    """Photo-like JPEGs (smooth colour fields plus grain; pure noise would compress and decode atypically)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        coarse = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (size[1], size[0], 3))
        buffer = io.BytesIO()
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=95)
        images.append(buffer.getvalue())
    return images


def bench_encode(folder: Path, jpegs: int, repeats: int) -> list[list]:
    from eidos.cli.main import main

    rows = []
    for size, what in (((512, 384), "512x384 JPEGs"), ((256, 256), "256x256 JPEGs, as img2dataset writes")):
        images = synthetic_jpegs(jpegs, size)
        seconds = median_seconds(lambda images=images: [to_rgb_square(data, 256) for data in images], CPU, repeats,
                                 warmup=1)
        rows.append([f"`to_rgb_square`: JPEG decode + crop + resize to 256 px, {what}", jpegs, f"{seconds:.2f}",
                     f"{jpegs / seconds:.0f}"])

    shards, cache = folder / "shards", folder / "cache"
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        main(["data", "shards", "--openmoji", "--out", str(shards)])
        render_seconds = time.perf_counter() - start
        start = time.perf_counter()
        count = sum(len(read_shard(path, 32, Counter()).keys) for path in sorted(shards.glob("*.tar")))
        read_seconds = time.perf_counter() - start
        stream = ShardStream(sorted(str(p) for p in shards.glob("*.tar")), 32, seed=0, rank=0, shuffle_buffer=1000)
        start = time.perf_counter()
        streamed = len(stream.take(count)[0])
        stream_seconds = time.perf_counter() - start
        start = time.perf_counter()
        main(["data", "encode", "--shards", str(shards / "*.tar"), "--out", str(cache), "--resolution", "32"])
        encode_seconds = time.perf_counter() - start
    assert len(list(cache.glob("*.h5"))) == len(list(shards.glob("*.tar"))), "encode wrote no cache"
    rows.append(["`eidos data shards --openmoji` (render + PNG, 128 px)", count, f"{render_seconds:.1f}",
                 f"{count / render_seconds:.0f}"])
    rows.append(["OpenMoji shards: tar read + PNG decode + crop + resize to 32 px", count, f"{read_seconds:.1f}",
                 f"{count / read_seconds:.0f}"])
    rows.append(["data.source=shards stream: resampled draws + shuffle buffer + decode, 32 px", streamed,
                 f"{stream_seconds:.1f}", f"{streamed / stream_seconds:.0f}"])
    rows.append(["`eidos data encode` of them (pixels + MiniLM, 32 px, HDF5 write)", count,
                 f"{encode_seconds:.1f}", f"{count / encode_seconds:.0f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=4, help="cache files per shape")
    parser.add_argument("--samples-per-file", type=int, default=1024)
    parser.add_argument("--jpegs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"machine: {machine()}; torch {torch.__version__}\n")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for i, (name, spec) in enumerate(SHAPES.items())
                for row in bench_cache(name, spec, Path(tmp) / f"cache-{i}", args.files, args.samples_per_file,
                                       args.repeats)]
        print(f"Cache loader: indices + rows + posterior sample per batch, from memory or streamed from the files "
              f"(median of {args.repeats} batches)\n")
        print_table(["shapes", "rows", "batch", "samples", "load s", "resident MiB", "KiB / sample", "batch ms",
                     "loader samples/s", "trainer samples/s", "loader time / trainer step"], rows)
        print("\nEncode stages (CPU)\n")
        print_table(["stage", "images", "s", "images/s"], bench_encode(Path(tmp), args.jpegs, 3))


if __name__ == "__main__":
    main()
