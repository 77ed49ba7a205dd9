"""EidosPipeline: save/load, determinism, forward counts, scheduler equivalence, offline loading, input checks."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from transformers import AutoTokenizer, BertConfig, BertModel

from eidos.batch import TextEmbeddings
from eidos.encoders import PixelCodec
from eidos.encoders.text import minilm_path
from eidos.sampling import sample_consistency, sample_flow_euler
from eidos.sampling.pipeline import EidosPipeline
from tests.conftest import make_tiny_model, randomize_


def make_pipeline(cross_attention=True) -> EidosPipeline:
    torch.manual_seed(0)
    text_encoder = BertModel(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=32)).eval()
    pipe = EidosPipeline(
        transformer=randomize_(make_tiny_model(cross_attention=cross_attention)).eval(), vae=PixelCodec(),
        text_encoder=text_encoder, tokenizer=AutoTokenizer.from_pretrained(minilm_path()),
        scheduler=FlowMatchEulerDiscreteScheduler(), text_pooling="mean", text_max_length=8,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipe")
    make_pipeline().save_pretrained(folder)
    return folder


def generate(pipe, seed, prompt="red apple", **kwargs):
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images


def test_save_load_generate_is_bit_identical(saved):
    assert (saved / "model_index.json").exists() and (saved / "transformer" / "config.json").exists()
    original = make_pipeline()
    loaded = EidosPipeline.from_pretrained(saved)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.transformer).__name__ == "MaskDiT" and isinstance(loaded.vae, PixelCodec)
    again = EidosPipeline.from_pretrained(saved)
    for steps in (1, 2):
        a, b = generate(original, 0, num_inference_steps=steps), generate(loaded, 0, num_inference_steps=steps)
        # Loaded tensors sit at other memory offsets, which moves CPU matmul kernels' rounding by ~1e-7;
        # two loads of the same folder agree to the bit.
        assert a.shape == (1, 16, 16, 3) and np.allclose(a, b, atol=1e-6)
        assert np.array_equal(b, generate(again, 0, num_inference_steps=steps))
        assert np.array_equal(b, generate(loaded, 0, num_inference_steps=steps))
    assert not np.array_equal(generate(loaded, 0), generate(loaded, 1))
    pil = loaded("red apple", generator=torch.Generator().manual_seed(0)).images[0]
    assert pil.size == (16, 16)


def count_forwards(pipe):
    sizes = []
    pipe.transformer.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[0]))
    return sizes


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_consistency_sampling_does_one_forward_per_step(steps):
    pipe = make_pipeline()
    sizes = count_forwards(pipe)
    pipe(["a", "b"], num_inference_steps=steps, output_type="latent")
    assert sizes == [2] * steps


def test_flow_cfg_does_one_batched_forward_per_step():
    pipe = make_pipeline()
    sizes = count_forwards(pipe)
    pipe(["a", "b"], num_inference_steps=5, sampler="flow", guidance_scale=3.0, output_type="latent")
    assert sizes == [4] * 5


@pytest.mark.parametrize("guidance_scale", [1.0, 2.5])
def test_scheduler_path_equals_native_euler(guidance_scale):
    pipe = make_pipeline()
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    via_scheduler = pipe(["red apple", "blue heart"], num_inference_steps=12, sampler="flow", latents=noise,
                         guidance_scale=guidance_scale, output_type="latent").images
    text = pipe.encode_prompt(["red apple", "blue heart"])
    native = sample_flow_euler(pipe.transformer, noise, text, num_steps=12, guidance_scale=guidance_scale)
    assert torch.allclose(via_scheduler, native, atol=1e-5)


def test_sigmas_set_the_grid_of_either_sampler():
    pipe = make_pipeline()
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    prompts = ["red apple", "blue heart"]

    def consistency(**kwargs):
        return pipe(prompts, latents=noise, generator=torch.Generator().manual_seed(1), output_type="latent",
                    **kwargs).images

    # the uniform grid given as sigmas is the default N-step sampler, bit for bit
    assert torch.equal(consistency(sigmas=[1.0, 0.5]), consistency(num_inference_steps=2))
    sizes = count_forwards(pipe)
    shifted = consistency(sigmas=[1.0, 0.7, 0.3])
    assert sizes == [2] * 3  # one forward per noise level; num_inference_steps (1) unused
    native = sample_consistency(pipe.transformer, noise, pipe.encode_prompt(prompts), times=[1.0, 0.7, 0.3],
                                generator=torch.Generator().manual_seed(1))
    assert torch.equal(shifted, native)
    assert not torch.allclose(consistency(sigmas=[1.0, 0.7]), consistency(num_inference_steps=2), atol=1e-4)

    def flow(**kwargs):
        return pipe(prompts, latents=noise, sampler="flow", guidance_scale=2.0, output_type="latent", **kwargs).images

    assert torch.equal(flow(sigmas=[1.0, 0.75, 0.5, 0.25]), flow(num_inference_steps=4))
    grid = [1.0, 0.9, 0.6, 0.2]
    euler = sample_flow_euler(pipe.transformer, noise, pipe.encode_prompt(prompts), guidance_scale=2.0,
                              times=grid + [0.0])
    assert torch.allclose(flow(sigmas=grid), euler, atol=1e-5)


def test_per_image_generators_make_each_image_reproducible():
    pipe = make_pipeline()
    generators = [torch.Generator().manual_seed(s) for s in (5, 6)]
    both = pipe(["a", "a"], num_inference_steps=2, generator=generators, output_type="np").images
    alone = pipe("a", num_inference_steps=2, generator=[torch.Generator().manual_seed(6)], output_type="np").images
    # the same noise and re-noising for image 2 whatever else is in the batch (batch size moves rounding only)
    assert np.allclose(both[1], alone[0], atol=1e-5) and not np.allclose(both[0], both[1], atol=1e-2)
    many = pipe("a", num_images_per_prompt=3, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert many.shape == (3, 3, 16, 16)


def test_empty_prompt_is_the_unconditional_one():
    pipe = make_pipeline()
    noise = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    empty = pipe("", latents=noise, output_type="latent").images
    unconditional = sample_consistency(pipe.transformer, noise, TextEmbeddings(torch.zeros(1, 16)), num_steps=1)
    with_text = pipe("red apple", latents=noise, output_type="latent").images
    # the model without any text (text_pooled=None) equals the model given "" (null text)
    model_none = pipe.transformer(noise, torch.ones(1)).sample
    assert torch.allclose(empty, noise - model_none, atol=1e-6)
    assert not torch.allclose(empty, with_text)
    assert unconditional.shape == empty.shape


def test_long_and_odd_prompts(caplog):
    pipe = make_pipeline()
    with caplog.at_level(logging.WARNING):
        out = pipe("a very long prompt " * 10, output_type="np").images
    assert "limit of 8 tokens" in caplog.text and out.shape == (1, 16, 16, 3)
    odd = pipe(["pomme rouge à l'été ☃", "🍎 🍏"], output_type="np").images
    assert np.isfinite(odd).all()


@pytest.mark.parametrize("kwargs,message", [
    (dict(prompt=[]), "empty list"),
    (dict(prompt="a", num_inference_steps=0), "num_inference_steps"),
    (dict(prompt=["a", "b"], generator=[torch.Generator()]), "1 generators for 2 images"),
    (dict(prompt="a", height=32), "16x16"),
    (dict(prompt="a", negative_prompt="b"), "sampler='flow'"),
    (dict(prompt="a", output_type="jpeg"), "output_type"),
    (dict(prompt="a", sigmas=[0.5, 0.7]), r"strictly decreasing.*got \[0.5, 0.7\]"),
    (dict(prompt="a", sigmas=[2.0, 1.0]), r"in \(0, 1\]"),
    (dict(prompt="a", sampler="flow", sigmas=[1.0, 0.0]), r"in \(0, 1\]"),
    (dict(prompt="a", sigmas=[]), "sigmas"),
    (dict(prompt="a", latents=torch.zeros(1, 3, 8, 8)), r"latents.*\(1, 3, 16, 16\)"),
])
def test_bad_inputs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_pipeline()(**kwargs)


def test_dtype_and_negative_prompt():
    pipe = make_pipeline().to(torch.bfloat16)
    images = pipe("a", output_type="pt").images
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()
    pipe = make_pipeline()
    a = pipe("a", sampler="flow", num_inference_steps=3, guidance_scale=2.0, negative_prompt="b",
             generator=torch.Generator().manual_seed(0), output_type="np").images
    b = pipe("a", sampler="flow", num_inference_steps=3, guidance_scale=2.0,
             generator=torch.Generator().manual_seed(0), output_type="np").images
    assert not np.array_equal(a, b)


def test_loads_in_a_fresh_offline_process(saved, tmp_path):
    script = (
        "import sys, torch; from eidos import EidosPipeline;"
        "p = EidosPipeline.from_pretrained(sys.argv[1]); p.set_progress_bar_config(disable=True);"
        "img = p('red apple', generator=torch.Generator().manual_seed(0)).images[0]; img.save(sys.argv[2])"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = tmp_path / "offline.png"
    subprocess.run([sys.executable, "-c", script, str(saved), str(out)], check=True, env=env, timeout=120)
    here = np.asarray(generate(EidosPipeline.from_pretrained(saved), 0)[0] * 255).round().astype(np.uint8)
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(out)), here)


def test_export_writes_new_folders_and_replaces_an_eidos_export_only_with_overwrite(saved, tmp_path, capsys):
    from eidos.cli.main import main
    from eidos.sampling.pipeline import is_eidos_export, save_pipeline

    out = tmp_path / "exports" / "model"
    assert main(["export", "--checkpoint", str(saved), "--out", str(out)]) == 0
    assert is_eidos_export(out) and not is_eidos_export(saved.parent)
    (out / "transformer" / "stale.txt").write_text("from before")  # to see that the folder is replaced whole
    assert main(["export", "--checkpoint", str(saved), "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err and (out / "transformer" / "stale.txt").exists()
    assert main(["export", "--checkpoint", str(saved), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "transformer" / "stale.txt").exists()
    assert [p.name for p in out.parent.iterdir()] == ["model"]  # no temp or old folder left beside it
    EidosPipeline.from_pretrained(out)
    (tmp_path / "empty").mkdir()
    save_pipeline(EidosPipeline.from_pretrained(saved), tmp_path / "empty")  # an empty folder is fine too
    assert is_eidos_export(tmp_path / "empty")
    with pytest.raises(ValueError, match="is not empty and is not an eidos export"):
        save_pipeline(EidosPipeline.from_pretrained(saved), tmp_path / "exports")
