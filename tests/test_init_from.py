"""Fine-tuning (train.init_from): weights and EMA from an export or a checkpoint, fresh optimizer and step, the
source recorded in config.yaml, one-line refusals of another codec, text encoder or shape before any work, a
resolution change, and exact resume of a fine-tune run."""

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import AutoencoderKL
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertModel

from eidos.cli.main import main
from eidos.config import default_config_path, load_config
from eidos.encoders import load_codec, load_text_encoder
from eidos.model import MaskDiT
from eidos.training.ema import EMA
from eidos.training.init_from import expected_model_config, resolve
from eidos.training.loop import train
from tests.conftest import openmoji_overrides, tiny_run_overrides

FINETUNE = str(Path(__file__).resolve().parents[1] / "configs" / "finetune.yaml")


def finetune_overrides(output_dir, data, source, max_steps, *extra) -> list[str]:
    """configs/finetune.yaml at the tiny test sizes, on `data` (data overrides, as for `tiny_run_overrides`)."""
    return [*tiny_run_overrides(output_dir, data, max_steps), f"train.init_from={source}", "train.warmup_steps=2",
            "train.tracker=none", *extra]


@pytest.fixture(scope="module")
def source(tmp_path_factory, synthetic_data):
    """A tiny trained run on the synthetic cache: checkpoint-10/ (raw weights, EMA) and model/ (the exported EMA)."""
    run = tmp_path_factory.mktemp("source")
    overrides = [*tiny_run_overrides(run, synthetic_data, max_steps=10), "train.tracker=none"]
    train(load_config(default_config_path(), overrides))
    return run


@pytest.fixture(scope="module")
def encoders(tiny_text_encoder_dir):
    """The source's codec and text encoder (the synthetic cache's)."""
    return load_codec("pixels"), load_text_encoder(str(tiny_text_encoder_dir), 16)


def built_model(config, encoders) -> tuple[MaskDiT, EMA]:
    torch.manual_seed(123)  # any fresh init: the source's weights must replace it
    model = MaskDiT(**expected_model_config(config, *encoders))
    return model, EMA(model, 0.999)


def tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k].to(a[k].dtype)) for k in a)


def test_init_from_a_checkpoint_or_an_export_loads_its_weights_and_ema(source, synthetic_data, encoders, tmp_path):
    config = load_config(FINETUNE, finetune_overrides(tmp_path / "ft", synthetic_data, source, 4))
    checkpoint = resolve(str(source))  # a run folder: its newest checkpoint
    assert checkpoint.checkpoint == source / "checkpoint-10" and checkpoint.step == 10
    checkpoint.check(config, *encoders)
    model, ema = built_model(config, encoders)
    checkpoint.load_into(model, ema)
    raw = {k.removeprefix("model."): v for k, v in load_file(source / "checkpoint-10" / "model.safetensors").items()}
    assert tensors_equal(dict(model.state_dict()), raw)
    assert tensors_equal(ema.shadow, load_file(source / "checkpoint-10" / "ema.safetensors"))
    assert not tensors_equal(ema.shadow, {k: v for k, v in raw.items() if k in ema.shadow})  # two different sets

    export = resolve(str(source / "model"))
    assert export.checkpoint is None and export.step is None
    model, ema = built_model(config, encoders)
    export.load_into(model, ema)
    exported = load_file(source / "model" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert tensors_equal(dict(model.state_dict()), exported)
    assert tensors_equal(ema.shadow, {k: v for k, v in exported.items() if k in ema.shadow})  # the export is the EMA
    assert tensors_equal(ema.shadow, load_file(source / "checkpoint-10" / "ema.safetensors"))


def test_a_fine_tune_starts_at_step_zero_with_a_fresh_optimizer_and_records_its_source(source, synthetic_data,
                                                                                       tmp_path):
    """A learning rate too small to move the weights: after the run they are still the source's."""
    run = tmp_path / "ft"
    stages = json.dumps([{"name": "flow", "fraction": 1.0, "mask_ratio": 0.0, "learning_rate": 1e-12,
                          "consistency": False}])
    overrides = finetune_overrides(run, synthetic_data, source / "model", 4, f"train.stages={stages}")
    train(load_config(FINETUNE, overrides))
    state = json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())
    assert state == {"step": 4, "samples_seen": 4 * 16, "skipped_steps": 0, "mixed_precision": "bf16"}
    optimizer = torch.load(run / "checkpoint-4" / "optimizer.bin", weights_only=True)
    assert {float(s["step"]) for s in optimizer["state"].values()} == {4.0}  # Adam counted from 0, not from 10
    exported = load_file(source / "model" / "transformer" / "diffusion_pytorch_model.safetensors")
    trained = {k.removeprefix("model."): v for k, v in load_file(run / "checkpoint-4" / "model.safetensors").items()}
    assert max(float((trained[k] - exported[k]).abs().max()) for k in exported) < 1e-6
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["init_from"] == str(source / "model")
    weights = source / "model" / "transformer" / "diffusion_pytorch_model.safetensors"
    assert saved["started_from"] == {
        "init_from": str(source / "model"), "folder": str((source / "model").resolve()), "kind": "export",
        "step": None, "weights": str(weights.resolve()),
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert load_config(run / "config.yaml").train.init_from == str(source / "model")  # the record is not a setting


def test_a_fine_tune_whose_first_stage_starts_from_the_ema_starts_from_the_sources_ema(source, synthetic_data,
                                                                                     tmp_path):
    """A checkpoint holds raw weights and their EMA. A first stage with start_from_ema (the default's consistency
    stage, as a fine-tune) must take the EMA at step 0; a learning rate too small to move the weights shows it."""
    run = tmp_path / "ft"
    stages = json.dumps([{"name": "consistency", "fraction": 1.0, "mask_ratio": 0.0, "learning_rate": 1e-12,
                          "restart_ema": True, "start_from_ema": True}])
    train(load_config(FINETUNE, finetune_overrides(run, synthetic_data, source / "checkpoint-10", 2,
                                                   f"train.stages={stages}")))
    averaged = load_file(source / "checkpoint-10" / "ema.safetensors")
    raw = {k.removeprefix("model."): v for k, v in load_file(source / "checkpoint-10" / "model.safetensors").items()}
    trained = {k.removeprefix("model."): v for k, v in load_file(run / "checkpoint-2" / "model.safetensors").items()}
    teacher = load_file(run / "teacher-0" / "transformer" / "diffusion_pytorch_model.safetensors")

    def farthest(a, b):
        return max(float((a[k].float() - b[k].float()).abs().max()) for k in b)

    assert farthest(trained, averaged) < 1e-6 and farthest(teacher, averaged) < 1e-6
    assert farthest(raw, averaged) > 1e-3  # the two differ: the test can tell which one the stage started from


def test_rerunning_a_fine_tune_resumes_exactly_without_reading_the_source_again(source, synthetic_data, tmp_path):
    """Run 20 steps (flow, then a frozen-teacher consistency stage from step 8), drop the checkpoint of step 20
    as if the run had stopped at step 10, move the source away, rerun the same command: bit-identical state."""
    moved = tmp_path / "source"
    shutil.copytree(source, moved)
    run = tmp_path / "ft"
    overrides = finetune_overrides(run, synthetic_data, moved, 20, "train.checkpoint_every=10")
    train(load_config(FINETUNE, overrides))
    done = {name: load_file(run / "checkpoint-20" / name) for name in ("model.safetensors", "ema.safetensors")}
    optimizer = torch.load(run / "checkpoint-20" / "optimizer.bin", weights_only=True)
    record = yaml.safe_load((run / "config.yaml").read_text())["started_from"]
    assert record["step"] == 10 and record["kind"] == "checkpoint"
    shutil.rmtree(run / "checkpoint-20")
    shutil.rmtree(run / "model")
    shutil.rmtree(moved)  # a resume does not need the source
    train(load_config(FINETUNE, overrides))
    for name, tensors in done.items():
        assert tensors_equal(tensors, load_file(run / "checkpoint-20" / name)), name
    resumed = torch.load(run / "checkpoint-20" / "optimizer.bin", weights_only=True)
    assert all(torch.equal(optimizer["state"][i]["exp_avg_sq"], resumed["state"][i]["exp_avg_sq"])
               for i in optimizer["state"])
    assert yaml.safe_load((run / "config.yaml").read_text())["started_from"] == record  # kept across the resume


@pytest.fixture
def other_text_encoder(tmp_path, tiny_text_encoder_dir):
    """The source's text encoder with one weight changed: the same architecture and tokenizer, another text
    encoder."""
    folder = tmp_path / "text-encoder-changed"
    model = BertModel.from_pretrained(tiny_text_encoder_dir)
    with torch.no_grad():
        model.pooler.dense.bias[0] += 1.0
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_text_encoder_dir).save_pretrained(folder)
    return folder


@pytest.fixture
def vae_dir(tmp_path):
    folder = tmp_path / "vae"
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                  sample_size=16).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("mismatch", ["codec", "text", "shape", "missing", "hub"])
def test_a_mismatched_source_is_refused_in_one_line_before_any_work(mismatch, source, tiny_text_encoder_dir, tmp_path,
                                                                     capsys, request, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "fresh-cache"  # the OpenMoji cache would be built here by any work
    data = [*openmoji_overrides(cache), f"encoders.text={tiny_text_encoder_dir}"]  # the source's text encoder
    init, extra, expected = str(source), [], ""
    if mismatch == "codec":
        extra, expected = [f"encoders.codec={request.getfixturevalue('vae_dir')}"], \
            "its codec is PixelCodec (trained with encoders.codec='pixels'), this run's encoders.codec="
    elif mismatch == "text":
        extra, expected = [f"encoders.text={request.getfixturevalue('other_text_encoder')}"], \
            "its text encoder differs from encoders.text="
    elif mismatch == "shape":
        extra, expected = ["model.depth=3"], "its transformer has another shape: depth=2 there, 3 here (model.depth)"
    elif mismatch == "missing":
        init, expected = "./no-such-model", "is not an existing folder"
    else:
        init, expected = "nobody-eidos/no-such-model", "could not be fetched from the Hugging Face Hub"
    overrides = finetune_overrides(tmp_path / "ft", data, init, 4, *extra)
    assert main(["train", "--config", FINETUNE, *overrides]) == 2
    err = capsys.readouterr().err  # (transformers may print its loading bar before)
    errors = [line for line in err.splitlines() if line.startswith("eidos train:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert expected in errors[0] and f"train.init_from={init!r}" in errors[0], errors[0]
    assert not cache.exists() or not any(cache.iterdir())
    assert not (tmp_path / "ft" / "config.yaml").exists()


def test_a_new_resolution_recomputes_the_position_embeddings(source, synthetic_data, encoders, tmp_path, caplog):
    """16x16 -> 32x32 pixels (4x4 -> 8x8 tokens): allowed, said how, every weight loaded, the model runs."""
    config = load_config(FINETUNE, finetune_overrides(tmp_path / "ft", synthetic_data, source, 4,
                                                     "data.resolution=32"))
    init = resolve(str(source))
    with caplog.at_level(logging.INFO, logger="eidos.training.init_from"):
        init.check(config, *encoders)
    assert "4x4 tokens), this run uses 32x32 (8x8 tokens): the fixed sin-cos position embeddings are computed " \
           "for the new grid" in caplog.text
    model, ema = built_model(config, encoders)
    init.load_into(model, ema)
    raw = {k.removeprefix("model."): v for k, v in load_file(source / "checkpoint-10" / "model.safetensors").items()}
    assert tensors_equal(dict(model.state_dict()), raw) and model.pos_embed.shape[1] == 64
    dim = encoders[1].dim  # the text encoder's width
    out = model(torch.randn(2, 3, 32, 32), torch.rand(2), text_pooled=torch.randn(2, dim),
                text_tokens=torch.randn(2, 16, dim), text_mask=torch.ones(2, 16, dtype=torch.bool))
    assert out.sample.shape == (2, 3, 32, 32) and torch.isfinite(out.sample).all()
