"""Shared test fixtures: a very small MaskDiT, an analytic velocity model for Gaussian data, tiny training runs on
two data sets (the embedded OpenMoji default, and a small synthetic cache for tests that only need some cache) and
small real file systems (tmpfs) for full-disk tests."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn
from transformers import BertConfig, BertModel, BertTokenizer

from eidos.batch import Batch, TextEmbeddings
from eidos.config import EncodersConfig, OpenMojiData, default_config_path, load_config
from eidos.data.cache import EncodedSet, cache_attributes, write_cache
from eidos.data.images import encode_images
from eidos.data.openmoji_cache import prepare_openmoji
from eidos.encoders import load_codec, load_text_encoder
from eidos.encoders.codecs import scaling_factor
from eidos.encoders.text import TextEncoder
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


def tiny_run_overrides(output_dir, data: list[str], max_steps=60) -> list[str]:
    """A training run that takes seconds on CPU: 16x16 pixels, a ~100k-parameter model, batch 16, bf16 autocast, on
    `data` (the data overrides of the `openmoji_data` or `synthetic_data` fixture)."""
    return [
        f"train.output_dir={output_dir}", *data, "data.resolution=16",
        "model.width=64", "model.depth=2", "model.heads=2", "model.decoder_width=32", "model.decoder_depth=1",
        "model.decoder_heads=2", f"train.max_steps={max_steps}", "train.batch_size=16", "train.warmup_steps=5",
        "train.checkpoint_every=30", "train.sample_every=30", "train.log_every=5",
        "train.mixed_precision=bf16",  # not "auto": two runs of a test must not time themselves into different ones
        "sampling.num_held_out_prompts=2", "sampling.num_train_prompts=2", "sampling.flow_steps=4",
    ]


def openmoji_overrides(cache_dir) -> list[str]:
    """The embedded default's data (OpenMoji, MiniLM text), its cache under `cache_dir`."""
    return ["data.source=openmoji", f"data.cache_dir={cache_dir}"]


@dataclass
class OpenMojiBuild:
    """The session's OpenMoji cache: the config sections it was built for, the MiniLM that encoded it (its
    `encode` counted in `encode_calls`, one call per split) and the paths of its train and held-out files."""

    data: OpenMojiData
    encoders: EncodersConfig
    text_encoder: TextEncoder
    encode_calls: list
    paths: dict[str, Path]


@pytest.fixture(scope="session")
def openmoji_build(tmp_path_factory) -> OpenMojiBuild:
    """The OpenMoji cache of the tiny runs (16x16), built once for the session by `prepare_openmoji` (about 10 s
    here, mostly MiniLM encoding ~2,000 captions). The builder's own test (tests/test_data.py) checks this build."""
    cache_dir = tmp_path_factory.mktemp("openmoji-cache")
    config = load_config(default_config_path(), tiny_run_overrides(cache_dir / "run", openmoji_overrides(cache_dir)))
    text_encoder = load_text_encoder(config.encoders.text, config.encoders.text_max_length)
    calls = []
    encode = text_encoder.encode
    text_encoder.encode = lambda captions: calls.append(1) or encode(captions)
    paths = prepare_openmoji(config.data, config.encoders, load_codec(config.encoders.codec), text_encoder)
    return OpenMojiBuild(config.data, config.encoders, text_encoder, calls, paths)


@pytest.fixture(scope="session")
def openmoji_data(openmoji_build) -> list[str]:
    """Data overrides of a tiny run on the embedded default, for tests whose subject is that default."""
    return openmoji_overrides(openmoji_build.data.cache_dir)


COLOURS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30),
           "purple": (140, 50, 170), "black": (20, 20, 20)}
SHAPES = ("square", "circle", "triangle", "bar")
SIZES = ("small", "big")


def shape_images(count: int, seed: int, resolution: int = 16) -> tuple[np.ndarray, list[str]]:
    """`count` coloured shapes on white, (count, resolution, resolution, 3) uint8, captioned "<size> <colour>
    <shape>" (e.g. "big red circle"); a pure function of `seed`."""
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for _ in range(count):
        size, colour, shape = str(rng.choice(SIZES)), str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
        half = resolution * (0.4 if size == "big" else 0.22)
        x, y = rng.uniform(half, resolution - half, size=2)
        image = Image.new("RGB", (resolution, resolution), "white")
        draw, fill = ImageDraw.Draw(image), COLOURS[colour]
        if shape == "square":
            draw.rectangle((x - half, y - half, x + half, y + half), fill=fill)
        elif shape == "circle":
            draw.ellipse((x - half, y - half, x + half, y + half), fill=fill)
        elif shape == "triangle":
            draw.polygon([(x, y - half), (x - half, y + half), (x + half, y + half)], fill=fill)
        else:
            draw.rectangle((x - half, y - half / 3, x + half, y + half / 3), fill=fill)
        images.append(np.asarray(image))
        captions.append(f"{size} {colour} {shape}")
    return np.stack(images), captions


def save_tiny_text_encoder(folder: Path, words: list[str]) -> Path:
    """A 1-layer, TEXT_DIM-wide BERT with random weights and a vocabulary of `words`, saved as a hub model folder
    (config, safetensors, tokenizer) that `encoders.text=<folder>` loads through the real loading code (mean
    pooling, as MiniLM's)."""
    folder.mkdir(parents=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (folder / "vocab.txt").write_text("\n".join([*specials, *words]) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    with torch.random.fork_rng():  # the random init leaves the tests' global seed alone
        torch.manual_seed(0)
        model = BertModel(BertConfig(vocab_size=len(specials) + len(words), hidden_size=TEXT_DIM,
                                     num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=32))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_text_encoder_dir(tmp_path_factory) -> Path:
    """The synthetic cache's text encoder (`save_tiny_text_encoder`), whose vocabulary is its captions' words."""
    return save_tiny_text_encoder(tmp_path_factory.mktemp("tiny-text-encoder") / "bert", [*SIZES, *COLOURS, *SHAPES])


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory, tiny_text_encoder_dir) -> list[str]:
    """Data overrides of a tiny run on a small synthetic cache, for tests that need some cache, not the OpenMoji
    default: 48 training and 8 held-out shape images (`shape_images`) encoded by the pixel codec and a tiny random
    text encoder (`tiny_text_encoder_dir`), written by the project's cache writer as `eidos data encode` writes
    them (data.source=cache). Built in about 0.1 s."""
    folder = tmp_path_factory.mktemp("synthetic-cache")
    overrides = ["data.source=cache", f"data.train_files={folder / 'train.h5'}",
                 f"data.held_out_files={folder / 'held_out.h5'}", f"encoders.text={tiny_text_encoder_dir}"]
    config = load_config(default_config_path(), tiny_run_overrides(folder / "run", overrides))
    codec = load_codec(config.encoders.codec)
    text_encoder = load_text_encoder(config.encoders.text, config.encoders.text_max_length)
    attributes = {**cache_attributes(config.data, config.encoders), "scaling_factor": scaling_factor(codec)}
    for split, count, seed in (("train", 48, 0), ("held_out", 8, 1)):
        images, captions = shape_images(count, seed, config.data.resolution)
        mean, logstd = encode_images(codec, images, batch_size=64, device="cpu")
        keys = [f"{split}-{i:03d}" for i in range(count)]
        encoded = EncodedSet(mean, logstd, text_encoder.encode(captions), captions, keys, attributes)
        write_cache(folder / f"{split}.h5", encoded)
    return overrides


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
