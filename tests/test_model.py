import json

import pytest
import torch

from eidos.model import MaskDiT, TokenMask
from tests.conftest import make_batch, make_tiny_model, randomize_


def test_output_shape_and_empty_mask(tiny_model):
    batch = make_batch()
    out = tiny_model(batch.latents, torch.rand(4), **batch.text.model_kwargs())
    assert out.sample.shape == batch.latents.shape
    scalar_t = tiny_model(batch.latents, 0.5, batch.text.pooled).sample
    assert scalar_t.shape == batch.latents.shape


def test_every_block_is_identity_at_init_and_output_ignores_input():
    model = make_tiny_model(cross_attention=True)
    batch = make_batch()
    diffs = []
    for block in [*model.encoder_blocks, *model.decoder_blocks]:
        block.register_forward_hook(lambda m, args, out: diffs.append((out - args[0]).abs().max().item()))
    mask = TokenMask.random(4, 16, 0.5, torch.Generator().manual_seed(0))
    a = model(batch.latents, torch.rand(4), **batch.text.model_kwargs(), token_mask=mask).sample
    b = model(torch.randn_like(batch.latents) * 5, torch.rand(4), **batch.text.model_kwargs()).sample
    assert len(diffs) == 6 and max(diffs) == 0.0
    assert torch.equal(a, torch.zeros_like(a)) and torch.equal(b, torch.zeros_like(b))


def test_wrong_input_shape_is_refused(tiny_model):
    with pytest.raises(ValueError, match=r"expects inputs of shape \(B, 3, 16, 16\), got \(2, 3, 32, 32\)"):
        tiny_model(torch.zeros(2, 3, 32, 32), 0.5)


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="unknown model preset 'XXL/2'"):
        MaskDiT.from_preset("XXL/2")


def test_real_scale_presets_match_the_dit_table():
    with torch.device("meta"):
        xl = MaskDiT.from_preset("XL/2")
    assert (xl.config.width, xl.config.depth, xl.config.heads) == (1152, 28, 16)
    assert (xl.config.in_channels, xl.config.sample_size, xl.config.patch_size, xl.config.text_dim) == (4, 32, 2, 768)
    assert xl.num_tokens == 256
    encoder = sum(p.numel() for p in xl.encoder_blocks.parameters())
    assert 640e6 < encoder < 680e6  # DiT-XL/2's 28 blocks are ~0.66B parameters


def test_null_text_ignores_the_prompt():
    model = randomize_(make_tiny_model(cross_attention=True))
    batch = make_batch()
    x, t = batch.latents, torch.full((4,), 0.5)
    drop = torch.tensor([True, True, False, False])
    a = model(x, t, **batch.text.model_kwargs(), drop_text=drop).sample
    other = make_batch(seed=7).text
    b = model(x, t, **other.model_kwargs(), drop_text=drop).sample
    assert torch.allclose(a[:2], b[:2], atol=1e-6)  # dropped: text has no effect
    assert (a[2:] - b[2:]).abs().max() > 1e-3  # kept: it does
    unconditional = model(x, t).sample
    assert torch.allclose(unconditional[:2], a[:2], atol=1e-6)


def test_cross_attention_respects_the_padding_mask():
    model = randomize_(make_tiny_model(cross_attention=True))
    batch = make_batch()
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[:, 3:] = False
    tokens = batch.text.tokens.clone()
    a = model(batch.latents, 0.4, batch.text.pooled, tokens, mask).sample
    tokens[:, 3:] = torch.randn(4, 2, 16)  # change only padding
    b = model(batch.latents, 0.4, batch.text.pooled, tokens, mask).sample
    tokens[:, 0] = torch.randn(4, 16)  # change a real token
    c = model(batch.latents, 0.4, batch.text.pooled, tokens, mask).sample
    assert torch.allclose(a, b, atol=1e-6)
    assert (a - c).abs().max() > 1e-3


def test_math_attention_equals_sdpa():
    model = randomize_(make_tiny_model(cross_attention=True))
    batch = make_batch()
    batch.text.mask[:, 4] = False
    mask = TokenMask.random(4, 16, 0.5, torch.Generator().manual_seed(0))
    kwargs = dict(t=torch.rand(4), **batch.text.model_kwargs(), token_mask=mask)
    a = model(batch.latents, **kwargs).sample
    b = model(batch.latents, **kwargs, math_attention=True).sample
    assert torch.allclose(a, b, atol=1e-5)


def test_save_and_load_round_trip(tmp_path):
    model = randomize_(make_tiny_model(cross_attention=True))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").exists() and (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = MaskDiT.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(model.config)
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    batch = make_batch()
    t = torch.rand(4)
    assert torch.equal(model(batch.latents, t, **batch.text.model_kwargs()).sample,
                       loaded(batch.latents, t, **batch.text.model_kwargs()).sample)


def test_with_a_branch_embedding_the_consistency_branch_starts_as_the_flow_branch():
    """|t| drives the time features and a zero-initialised embedding marks the consistency branch (t > 0): at
    init G(x, s) = G(x, -s) exactly, and the branches part once the embedding moves."""
    model = randomize_(make_tiny_model(branch_embedding=True))
    with torch.no_grad():
        model.branch_embed.zero_()
    batch = make_batch()
    s = torch.rand(4) * 0.9 + 0.05
    kwargs = batch.text.model_kwargs()
    assert torch.equal(model(batch.latents, s, **kwargs).sample, model(batch.latents, -s, **kwargs).sample)
    with torch.no_grad():
        model.branch_embed.normal_()
    assert not torch.allclose(model(batch.latents, s, **kwargs).sample, model(batch.latents, -s, **kwargs).sample)


def test_a_model_saved_before_the_branch_embedding_loads_unchanged(tmp_path):
    """Exports made before the option existed have no `branch_embedding` in config.json: they load with the
    signed time features they were trained with, and predict what they did."""
    old = randomize_(make_tiny_model(branch_embedding=False))
    assert not any("branch" in name for name in old.state_dict())
    old.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["branch_embedding"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = MaskDiT.from_pretrained(tmp_path)
    assert loaded.branch_embed is None
    batch, t = make_batch(), torch.tensor([-0.3, 0.3, -0.8, 0.8])
    kwargs = batch.text.model_kwargs()
    assert torch.equal(old(batch.latents, t, **kwargs).sample, loaded(batch.latents, t, **kwargs).sample)
