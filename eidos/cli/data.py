"""`eidos data`: make webdataset shards (img2dataset's layout) from an image folder or the embedded OpenMoji set."""

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


def run(args: argparse.Namespace) -> int:
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
