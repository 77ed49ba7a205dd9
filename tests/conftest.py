"""Shared test fixtures: a very small MaskDiT, an analytic velocity model for Gaussian data, tiny training runs
and small real file systems (tmpfs) for full-disk tests."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from eidos.batch import Batch, TextEmbeddings
from eidos.model import MaskDiT, MaskDiTOutput

TEXT_DIM = 16


def make_tiny_model(**overrides) -> MaskDiT:
    """16x16 RGB, patch 4 -> 16 tokens; a few thousand parameters."""
    config = dict(sample_size=16, text_dim=TEXT_DIM, width=64, depth=2, heads=2, decoder_width=32,
                  decoder_depth=1, decoder_heads=2)
    config.update(overrides)
    return MaskDiT.from_preset("tiny", **config)


def randomize_(model: nn.Module, std: float = 0.05, seed: int = 0) -> nn.Module:
    """Add noise to every parameter so zero-initialised gates stop hiding the network (an 'trained' stand-in)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * std)
    return model


def make_batch(size: int = 4, tokens: int = 5, seed: int = 0, sample_size: int = 16) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    latents = torch.rand(size, 3, sample_size, sample_size, generator=generator) * 2 - 1
    text = TextEmbeddings(
        pooled=torch.randn(size, TEXT_DIM, generator=generator),
        tokens=torch.randn(size, tokens, TEXT_DIM, generator=generator),
        mask=torch.ones(size, tokens, dtype=torch.bool),
    )
    return Batch(latents, text)


@pytest.fixture
def tiny_model() -> MaskDiT:
    torch.manual_seed(0)
    return make_tiny_model()


class GaussianVelocity(nn.Module):
    """Exact velocities for data x0 ~ N(mu, sigma0^2), independently per element, on the path
    x_s = (1 - s) x0 + s eps. x_s is Gaussian with mean (1 - s) mu and variance V(s) = (1-s)^2 sigma0^2 + s^2.

    t < 0 (flow branch, s = -t): v(x, s) = E[eps - x0 | x_s = x].
    t > 0 (consistency branch, s = t): the probability-flow ODE keeps the standardised value
    z = (x - (1-s) mu) / sqrt(V(s)) fixed (monotone transport between 1-D Gaussians), so
    x0 = mu + sigma0 z and the average velocity from s to 0 is (x - x0) / s.
    """

    def __init__(self, mu: float, sigma0: float, patch_size: int = 4):
        super().__init__()
        self.mu, self.sigma0, self.patch_size = mu, sigma0, patch_size
        self.calls = 0

    def stats(self, s):
        return (1 - s) * self.mu, (1 - s) ** 2 * self.sigma0**2 + s**2

    def instantaneous(self, x, s):
        mean, var = self.stats(s)
        centred = x - mean
        x0 = self.mu + (1 - s) * self.sigma0**2 / var * centred
        eps = s / var * centred
        return eps - x0

    def average(self, x, s):
        mean, var = self.stats(s)
        x0 = self.mu + self.sigma0 * (x - mean) / var.sqrt()
        return (x - x0) / s

    def forward(self, x, t, drop_text=None, token_mask=None, **_ignored):
        self.calls += 1
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0]).reshape(-1, 1, 1, 1)
        s = t.abs().clamp_min(1e-6)
        sample = torch.where(t < 0, self.instantaneous(x, s), self.average(x, s))
        return MaskDiTOutput(sample=sample)


@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory):
    """One OpenMoji cache for the whole session (building it loads MiniLM and encodes ~2,000 captions)."""
    return tmp_path_factory.mktemp("eidos-cache")


def tiny_run_overrides(output_dir, cache_dir, max_steps=60) -> list[str]:
    """A training run that takes seconds on CPU: 16x16 pixels, a ~100k-parameter model, batch 16."""
    return [
        f"train.output_dir={output_dir}", f"data.cache_dir={cache_dir}", "data.resolution=16",
        "model.width=64", "model.depth=2", "model.heads=2", "model.decoder_width=32", "model.decoder_depth=1",
        "model.decoder_heads=2", f"train.max_steps={max_steps}", "train.batch_size=16", "train.warmup_steps=5",
        "train.checkpoint_every=30", "train.sample_every=30", "train.log_every=5",
        "sampling.num_held_out_prompts=2", "sampling.num_train_prompts=2", "sampling.flow_steps=4",
    ]


@contextlib.contextmanager
def mounted_tmpfs(path, size: str, options: str = ""):
    """A real small file system at `path` (tmpfs of `size`, e.g. "300M"), for full-disk and read-only tests.
    Mounting needs root (or CAP_SYS_ADMIN); the test is skipped where it is not allowed."""
    if not tmpfs_available():
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)")
    path.mkdir(parents=True, exist_ok=True)
    options = ",".join(filter(None, [f"size={size}", options]))
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True, timeout=30)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)


@functools.cache
def tmpfs_available() -> bool:
    """Whether this process may mount a tmpfs (root or CAP_SYS_ADMIN, and a mount command)."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", folder], capture_output=True,
                                     timeout=30)
        except FileNotFoundError:
            return False
        if mounted.returncode == 0:
            subprocess.run(["umount", folder], check=False, timeout=30)
        return mounted.returncode == 0


def fill_to(path, free_bytes: int) -> Path:
    """Fill the file system holding `path` until about `free_bytes` are left; returns the filler file."""
    stats = os.statvfs(path)
    filler = Path(path) / "filler"
    size = stats.f_bavail * stats.f_frsize - free_bytes
    with open(filler, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, size)
    return filler
