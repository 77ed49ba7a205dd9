"""`eidos data`: webdataset shards (img2dataset's layout) from an image folder or OpenMoji; shards -> HDF5 caches."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    shards = actions.add_parser("shards", help="write webdataset tars ({key}.jpg|png + .txt + .json)",
                                description="Write webdataset shards from an image folder or from OpenMoji.")
    source = shards.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of images (searched recursively); captions from {stem}.txt "
                                         "sidecars unless --captions is given")
    source.add_argument("--openmoji", action="store_true", help="the embedded OpenMoji set, rendered at 128 px")
    shards.add_argument("--captions", help="csv/tsv/jsonl with columns file (or image) and caption (or text)")
    shards.add_argument("--skin-tone-variants", choices=("keep", "drop"), default="keep",
                        help="with --openmoji: keep all variants or one image per base emoji (default keep)")
    shards.add_argument("--out", required=True, help="output folder for shard-00000.tar, ...")
    shards.add_argument("--samples-per-shard", type=int, default=1000)
    add_encode_arguments(actions)


def run(args: argparse.Namespace) -> int:
    return run_encode(args) if args.action == "encode" else run_shards(args)


def run_encode(args: argparse.Namespace) -> int:
    import glob
    from collections import Counter
    from pathlib import Path

    import torch
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from eidos.config import EncodersConfig
    from eidos.data.encode import encode_shard
    from eidos.encoders import load_codec, load_text_encoder

    max_length = args.text_max_length or (77 if args.text_encoder == "clip" else 16)
    EncodersConfig(codec=args.codec, text=args.text_encoder, text_max_length=max_length)  # validate the names
    if args.resolution < 8 or args.resolution % 8:
        raise ValueError(f"--resolution must be a multiple of 8, got {args.resolution}")
    shards = sorted(Path(p) for p in glob.glob(args.shards))
    if not shards:
        raise FileNotFoundError(f"--shards {args.shards!r} matches no file")
    state = PartialState(cpu=not torch.cuda.is_available())
    mine = shards[state.process_index :: state.num_processes]  # each process its own shards
    out = Path(args.out)
    todo = [s for s in mine if not (out / f"{s.stem}.h5").exists()]
    codec = load_codec(args.codec).to(state.device).eval()
    text_encoder = load_text_encoder(args.text_encoder, max_length, state.device)
    attributes = {"codec": args.codec, "text_encoder": args.text_encoder, "text_max_length": max_length,
                  "resolution": args.resolution}
    skipped: Counter = Counter()
    written = 0
    progress = tqdm(todo, desc="encode", unit="shard", disable=not state.is_local_main_process)
    for shard in progress:
        written += encode_shard(shard, out / f"{shard.stem}.h5", codec, text_encoder, attributes, args.batch_size,
                                skipped, state.device)
        progress.set_postfix(images=written)
    print(f"process {state.process_index}: encoded {written} samples from {len(todo)} shard(s) "
          f"({len(mine) - len(todo)} already done) into {out}")
    for reason, count in skipped.items():
        print(f"  skipped {count}: {reason}")
    return 0


def run_shards(args: argparse.Namespace) -> int:
    from eidos.data import openmoji
    from eidos.data.shards import image_folder_samples, openmoji_samples, write_shards

    if args.samples_per_shard < 1:
        raise ValueError(f"--samples-per-shard must be >= 1, got {args.samples_per_shard}")
    if args.captions and not args.images:
        raise ValueError("--captions goes with --images")
    not_included = {}
    if args.openmoji:
        items, not_included = openmoji.list_emoji(args.skin_tone_variants)
        samples = openmoji_samples(items)
    else:
        samples = image_folder_samples(args.images, args.captions)
    report = write_shards(samples, args.out, args.samples_per_shard)
    print(f"wrote {report.written} samples in {len(report.shards)} shard(s) to {args.out}")
    for reason, count in {**dict(not_included), **dict(report.skipped)}.items():
        print(f"  skipped {count}: {reason}")
    return 0


def add_encode_arguments(actions) -> None:
    encode = actions.add_parser("encode", help="encode shards into HDF5 caches (one per shard)",
                                description="Encode webdataset shards with an image codec and a text encoder "
                                            "into HDF5 cache files (one per shard; reruns skip finished shards). "
                                            "Run under `accelerate launch` to split the shards over processes.")
    encode.add_argument("--shards", required=True, help="glob of .tar shards, e.g. 'shards/*.tar'")
    encode.add_argument("--out", required=True, help="output folder for {shard}.h5")
    encode.add_argument("--codec", default="pixels", help="pixels, sdxl, or an AutoencoderKL hub id / folder")
    encode.add_argument("--text-encoder", default="minilm", help="minilm, clip, or a hub id / folder")
    encode.add_argument("--text-max-length", type=int, default=None, help="tokens (default 77 for CLIP, else 16)")
    encode.add_argument("--resolution", type=int, default=256, help="image side after centre crop (default 256)")
    encode.add_argument("--batch-size", type=int, default=32)
