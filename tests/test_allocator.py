"""The CLI's malloc setting: freed memory is reused instead of page-faulted in again, and a user's own
allocator settings are left alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from eidos.cli.allocator import keep_freed_memory_for_reuse, users_allocator_settings

# Five 20 MiB blocks allocated, touched and freed, five times: the page faults of the last three rounds.
PROBE = """
import resource, sys, torch
from eidos.cli.allocator import keep_freed_memory_for_reuse
if sys.argv[1] == "keep":
    keep_freed_memory_for_reuse()
def allocate_and_free():
    blocks = [torch.ones(5 * 1024 * 1024) for _ in range(5)]
    del blocks
for _ in range(2):
    allocate_and_free()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    allocate_and_free()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str, **settings: str) -> int:
    chosen = users_allocator_settings(os.environ)
    env = {**{name: value for name, value in os.environ.items() if name not in chosen}, **settings}
    done = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc on Linux")
def test_freed_blocks_are_reused_without_page_faults():
    # The control: every block mmapped, fresh from the kernel each round (3 x 100 MiB = 76,800 pages). glibc's own
    # defaults fall between the two and vary with what else the process allocates (5k-60k here), so they are not
    # the control; BENCHMARKS.md measures them in training.
    fresh = page_faults("plain", MALLOC_MMAP_THRESHOLD_="131072")
    kept = page_faults("keep")
    assert fresh > 60_000
    assert kept * 4 < fresh


def test_a_users_own_malloc_setting_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert keep_freed_memory_for_reuse() == "left as is: MALLOC_ARENA_MAX set"
