"""`eidos data`: webdataset shards (img2dataset's layout) from a URL list, an image folder or OpenMoji; shards -> HDF5
caches."""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    shards = actions.add_parser("shards", help="write webdataset tars ({key}.jpg|png + .txt + .json)",
                                description="Write webdataset shards from an image folder, a Hugging Face "
                                            "dataset or OpenMoji.")
    source = shards.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of images (searched recursively); captions from {stem}.txt "
                                         "sidecars unless --captions is given")
    source.add_argument("--hf-dataset", metavar="PATH_OR_ID",
                        help="a Hugging Face `datasets` dataset, streamed: parquet file(s), an imagefolder with "
                             "metadata.jsonl, a save_to_disk folder or a hub id (needs the extra eidos[hf])")
    source.add_argument("--openmoji", action="store_true", help="the embedded OpenMoji set, rendered at 128 px")
    shards.add_argument("--captions", help="csv/tsv/jsonl with columns file (or image) and caption (or text)")
    for flag, default, what in (("--split", "train", "the split to read"), ("--image-column", "image", "image column"),
                                ("--caption-column", "text", "caption column")):
        shards.add_argument(flag, help=f"with --hf-dataset: {what} (default {default})")
    shards.add_argument("--skin-tone-variants", choices=("keep", "drop"), default="keep",
                        help="with --openmoji: keep all variants or one image per base emoji (default keep)")
    shards.add_argument("--out", required=True, help="output folder for shard-00000.tar, ...")
    shards.add_argument("--samples-per-shard", type=int, default=1000)
    add_encode_arguments(actions)
    add_download_arguments(actions)


def run(args: argparse.Namespace) -> int:
    return {"shards": run_shards, "encode": run_encode, "download": run_download}[args.action](args)


def run_download(args: argparse.Namespace) -> int:
    import shlex
    import subprocess
    from pathlib import Path

    from eidos.data.prepare.download import downloaded, find_img2dataset, img2dataset_command

    executable = find_img2dataset(args.img2dataset)  # first: without it nothing below is of use
    url_list, out = Path(args.url_list).expanduser(), Path(args.out).expanduser()
    if not url_list.is_file():
        raise FileNotFoundError(f"--url-list {url_list} does not exist")
    for name in ("image_size", "processes", "threads", "samples_per_shard"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    command = img2dataset_command(executable, url_list, out, url_col=args.url_col, caption_col=args.caption_col,
                                  image_size=args.image_size, processes=args.processes, threads=args.threads,
                                  samples_per_shard=args.samples_per_shard)
    print(shlex.join(command))
    if args.dry_run:
        return 0
    returncode = subprocess.run(command).returncode
    if returncode != 0:
        print(f"img2dataset failed with exit status {returncode}; rerun the same command to resume", file=sys.stderr)
        return returncode
    shards, images = downloaded(out)
    if not shards:
        raise ValueError(f"img2dataset wrote no shard into {out}; see its log above (are the URLs reachable?)")
    print(f"wrote {len(shards)} shard(s)" + (f" with {images} images" if images is not None else "") + f" to {out}")
    print("next: eidos data encode --shards " + shlex.quote(str(out / "*.tar")) + " --out cache/ --codec sdxl "
          f"--text-encoder clip --resolution {args.image_size}")
    return 0


def run_encode(args: argparse.Namespace) -> int:
    import glob
    import time
    from collections import Counter
    from pathlib import Path

    import torch
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from eidos.cli.checks import check_writable_folder
    from eidos.config import EncodersConfig, check_model_reference
    from eidos.data.cache import is_up_to_date
    from eidos.data.prepare.shard_encoder import check_shard_names, encode_shard, read_shards_ahead, stale_caches
    from eidos.encoders import load_codec, load_text_encoder

    max_length = args.text_max_length or (77 if args.text_encoder == "clip" else 16)
    check_model_reference(args.codec, "--codec")  # named as the user typed them, before the config's checks
    check_model_reference(args.text_encoder, "--text-encoder")
    EncodersConfig(codec=args.codec, text=args.text_encoder, text_max_length=max_length)  # validate the names
    if args.resolution < 8 or args.resolution % 8:
        raise ValueError(f"--resolution must be a multiple of 8, got {args.resolution}")
    if args.decode_threads < 1 or args.batch_size < 1:
        raise ValueError(f"--decode-threads and --batch-size must be >= 1, got {args.decode_threads} and "
                         f"{args.batch_size}")
    shards = sorted(Path(p) for p in glob.glob(os.path.expanduser(args.shards)))
    if not shards:
        raise FileNotFoundError(f"--shards {args.shards!r} matches no file")
    check_shard_names(shards)
    out = Path(args.out).expanduser()
    check_writable_folder(out, "--out")
    state = PartialState(cpu=not torch.cuda.is_available())
    mine = shards[state.process_index :: state.num_processes]  # each process its own shards
    attributes = {"codec": args.codec, "text_encoder": args.text_encoder, "text_max_length": max_length,
                  "resolution": args.resolution}
    # new shards, changed ones, damaged ones again, and caches made with other settings
    todo = [s for s in mine if not is_up_to_date(out / f"{s.stem}.h5", s, attributes)]
    if state.is_main_process:
        for stale in stale_caches(out, shards):
            print(f"warning: {stale}; a glob of {out}/*.h5 still reads it: delete it if it is stale", file=sys.stderr)
    codec = load_codec(args.codec).to(state.device).eval()
    text_encoder = load_text_encoder(args.text_encoder, max_length, state.device)
    skipped: Counter = Counter()
    written = 0
    progress = tqdm(read_shards_ahead(todo, args.resolution, skipped, args.decode_threads), total=len(todo),
                    desc="encode", unit="shard", disable=not state.is_local_main_process)
    started = time.perf_counter()
    for contents in progress:
        written += encode_shard(contents, out / f"{contents.path.stem}.h5", codec, text_encoder, attributes,
                                args.batch_size, state.device)
        progress.set_postfix(images=written, images_per_s=f"{written / (time.perf_counter() - started):.0f}")
    print(f"process {state.process_index}: encoded {written} samples from {len(todo)} shard(s) "
          f"({len(mine) - len(todo)} already done) into {out}")
    for reason, count in skipped.items():
        print(f"  skipped {count}: {reason}")
    return 0


def run_shards(args: argparse.Namespace) -> int:
    from eidos.cli.checks import check_writable_folder
    from eidos.data import openmoji_set
    from eidos.data.prepare.hf_dataset import hf_dataset_samples
    from eidos.data.prepare.shard_writer import image_folder_samples, openmoji_samples, write_shards

    if args.samples_per_shard < 1:
        raise ValueError(f"--samples-per-shard must be >= 1, got {args.samples_per_shard}")
    if args.captions and not args.images:
        raise ValueError("--captions goes with --images")
    hf_options = {"split": "train", "image_column": "image", "caption_column": "text"}
    for name in hf_options:
        if getattr(args, name) is not None and not args.hf_dataset:
            raise ValueError(f"--{name.replace('_', '-')} goes with --hf-dataset")
    check_writable_folder(args.out, "--out")
    not_included = {}
    if args.openmoji:
        items, not_included = openmoji_set.list_emoji(args.skin_tone_variants)
        samples = openmoji_samples(items)
    elif args.hf_dataset:
        samples = hf_dataset_samples(args.hf_dataset, **{k: getattr(args, k) or v for k, v in hf_options.items()})
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
    encode.add_argument("--decode-threads", type=int, default=min(8, os.cpu_count() or 1),
                        help="threads decoding the next shard's images while this one encodes (default: CPUs, at "
                             "most 8)")


def add_download_arguments(actions) -> None:
    download = actions.add_parser("download", help="download a URL + caption list into shards with img2dataset",
                                  description="Download the images of a URL + caption list into webdataset shards "
                                              "by running img2dataset (installed in its own environment: it pins "
                                              "webdataset<0.3). Rerun the same command to resume.")
    download.add_argument("--url-list", required=True, help=".parquet, .csv or .tsv file with url and caption columns")
    download.add_argument("--out", required=True, help="output folder for 00000.tar, ...")
    download.add_argument("--url-col", default="url", help="column of the image URLs (default url)")
    download.add_argument("--caption-col", default="caption", help="column of the captions (default caption)")
    download.add_argument("--image-size", type=int, default=256,
                          help="side of the centre-cropped JPEGs (default 256; at least the encode --resolution)")
    download.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                          help="img2dataset processes (default: the CPU count)")
    download.add_argument("--threads", type=int, default=64, help="download threads per process (default 64)")
    download.add_argument("--samples-per-shard", type=int, default=1000)
    download.add_argument("--img2dataset", help="path of the img2dataset program (default: img2dataset on PATH)")
    download.add_argument("--dry-run", action="store_true", help="print the img2dataset command, do not run it")
