"""Shared helpers of the benchmark scripts: timing with medians, a markdown table, the machine's name, and the
command line of the synthetic image sets."""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name: Linux's /proc/cpuinfo "model name" (platform.processor() is empty on Linux), else
    what platform reports."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{cpu_model()}, {torch.get_num_threads()} CPU threads"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of fn() over `repeats` runs after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def print_table(header: list[str], rows: list[list]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


def timed_step(step, device: torch.device, repeats: int) -> tuple[float, float]:
    """(median seconds, peak GiB on GPU else nan) of a training step; (nan, nan) when it runs out of memory."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        seconds = median_seconds(step, device, repeats)
    except torch.OutOfMemoryError:
        return float("nan"), float("nan")
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return seconds, peak


def write_image_set(description: str, prefix: str, draw: Callable[[random.Random, int], tuple]) -> None:
    """The command of a synthetic image set (--out, --images, --held-out, --size, --seed): `draw(rng, size)`'s
    (PIL image, caption) pairs written as OUT/held_out (the first --held-out) and OUT/train image folders of
    {prefix}-{index}.png with {stem}.txt caption sidecars, the input of `eidos data shards --images`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--held-out", type=int, default=100, help="images written to OUT/held_out")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} is not empty; choose a new folder")
    for split in ("train", "held_out"):
        (args.out / split).mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    for index in range(args.images):
        image, caption = draw(rng, args.size)
        stem = args.out / ("held_out" if index < args.held_out else "train") / f"{prefix}-{index:05d}"
        image.save(stem.with_suffix(".png"))
        stem.with_suffix(".txt").write_text(caption)
    print(f"wrote {args.images} images with captions to {args.out} ({args.held_out} in held_out/)")
