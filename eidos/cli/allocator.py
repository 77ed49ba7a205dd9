"""glibc's malloc set to keep freed memory for reuse, for the process an `eidos` command runs in.

A training step frees and allocates the same activation buffers every step (up to 12 MiB each in the embedded
default). glibc serves blocks above its mmap threshold with fresh pages from the kernel and hands them back on
free, and it trims the heap's free top back to the kernel: so each step page-faults its activations in anew,
and the kernel zeroes every page. On our 2-core CPU a flow matching step of the default's model took 23k page
faults and 0.12 s of system time, a FACM step with the JVP on the whole batch 93k and 0.41 s (BENCHMARKS.md,
"Freed memory kept for reuse"). Keeping blocks up to glibc's largest mmap threshold (32 MiB) on the heap and
never trimming it brings both to about 1.6k faults: 3-5% of the default's training time. PyTorch's CPU
performance guide gets the same from jemalloc or tcmalloc preloaded; this needs no library.

It is the command's choice, not the library's: `eidos.cli.main` calls it, an API user's process is left as it
is. A user's own allocator settings win: with LD_PRELOAD, a MALLOC_* variable or GLIBC_TUNABLES set it does
nothing. The arithmetic is unchanged (a run's losses are the same to the last digit); the price is that the
process keeps its peak memory until it ends.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt's parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
LARGEST_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's cap on 64-bit machines (HEAP_MAX_SIZE / 2)
NEVER_TRIM = 2**31 - 1  # the largest int mallopt takes


def users_allocator_settings(environ) -> list[str]:
    """The environment variables by which a user chose an allocator or its settings themselves."""
    return [name for name in environ if name in ("LD_PRELOAD", "GLIBC_TUNABLES") or name.startswith("MALLOC_")]


def keep_freed_memory_for_reuse() -> str:
    """Set glibc's malloc to keep freed blocks up to 32 MiB for reuse; says what it did, or why not."""
    if not sys.platform.startswith("linux"):
        return "left as is: not Linux"
    if chosen := users_allocator_settings(os.environ):
        return f"left as is: {', '.join(sorted(chosen))} set"
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "left as is: not glibc"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not (mallopt(M_MMAP_THRESHOLD, LARGEST_MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)):
        return "left as is: mallopt refused the settings"
    return "freed blocks up to 32 MiB kept for reuse"
