"""`eidos data encode` of a set whose captions repeat: text encoding per sample against once per distinct caption.

A generated set of N photo-like 256 x 256 JPEGs (img2dataset's size) with 10 distinct captions, written as
shards by the real shard writer, is encoded with the pixels codec and MiniLM by the command's own loop
(`read_shards_ahead` + `encode_shard`: decoding of the next shard in threads, HDF5 writes included), once
encoding each distinct caption of a shard once (the code as it is) and once encoding every sample's caption (as
before), and compared with reading + decoding the shards alone and with the text encoder alone. Medians of
`--repeats` runs after one untimed run, all in one process.

    OMP_NUM_THREADS=1 nice -n 19 python -m benchmarks.encode_captions
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path
from unittest import mock

import torch

from benchmarks.common import machine, median_seconds, print_table
from benchmarks.loader import synthetic_jpegs
from eidos.data.prepare import shard_encoder
from eidos.data.prepare.shard_writer import ShardSample, write_shards
from eidos.encoders import load_codec, load_text_encoder

CPU = torch.device("cpu")
CAPTIONS = [f"a photo of a {name}" for name in ("cat", "dog", "red apple", "blue car", "house", "tree", "bird",
                                                  "boat", "yellow flower", "mountain lake")]
ATTRIBUTES = {"codec": "pixels", "text_encoder": "minilm", "text_max_length": 16}


def every_caption(text_encoder, captions):
    """The encoding before: the text encoder runs on every sample's caption."""
    return text_encoder.encode(captions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--samples-per-shard", type=int, default=500)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--decode-threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine()}; torch {torch.__version__}\n")
    codec, text_encoder = load_codec("pixels").eval(), load_text_encoder("minilm", 16)
    attributes = {**ATTRIBUTES, "resolution": args.resolution}
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        samples = (ShardSample(f"{i:09d}", data, "jpg", captions[i])
                   for i, data in enumerate(synthetic_jpegs(args.images, (256, 256))))
        shards = write_shards(samples, Path(tmp) / "shards", args.samples_per_shard).shards

        def read_and_decode():
            for _ in shard_encoder.read_shards_ahead(shards, args.resolution, Counter(), args.decode_threads):
                pass

        def encode_all():
            written = 0
            for contents in shard_encoder.read_shards_ahead(shards, args.resolution, Counter(), args.decode_threads):
                out = Path(tmp) / "cache" / f"{contents.path.stem}.h5"
                written += shard_encoder.encode_shard(contents, out, codec, text_encoder, attributes, 32, CPU)
            assert written == args.images, written

        timed: dict[str, float] = {}

        def measure(stage: str, fn) -> float:
            timed[stage] = median_seconds(fn, CPU, args.repeats, warmup=1)
            return timed[stage]

        once = measure("`eidos data encode`, each distinct caption of a shard encoded once (now)", encode_all)
        with mock.patch.object(shard_encoder, "encode_distinct_captions", every_caption):
            before = measure("`eidos data encode`, every sample's caption encoded (before)", encode_all)
        decode = measure("reading + decoding the shards alone (tar read, JPEG decode, crop, resize)", read_and_decode)
        measure("MiniLM alone on every sample's caption", lambda: text_encoder.encode(captions))
        per_shard = [captions[i : i + args.samples_per_shard] for i in range(0, args.images, args.samples_per_shard)]
        measure("MiniLM alone on each shard's distinct captions",
                lambda: [shard_encoder.encode_distinct_captions(text_encoder, shard) for shard in per_shard])
    print(f"{args.images} images of 256 x 256 JPEG, {len(CAPTIONS)} distinct captions, {len(shards)} shards, "
          f"pixels codec at {args.resolution} px, MiniLM 16 tokens, {args.decode_threads} decode threads, "
          f"{torch.get_num_threads()} torch threads (median of {args.repeats})\n")
    print_table(["stage", "images", "s", "images/s", "time / decoding alone"],
                [[stage, args.images, f"{seconds:.2f}", f"{args.images / seconds:.0f}", f"{seconds / decode:.2f}"]
                 for stage, seconds in timed.items()])
    print(f"\nspeed-up of encoding each distinct caption once: {before / once:.1f}x")


if __name__ == "__main__":
    main()
