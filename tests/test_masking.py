import pytest
import torch

from eidos.model import TokenMask
from eidos.model.masking import num_kept_tokens
from tests.conftest import make_batch, make_tiny_model, randomize_


@pytest.mark.parametrize("num_tokens,ratio", [(64, 0.5), (256, 0.5), (16, 0.25), (10, 0.75), (64, 0.0)])
def test_keeps_exactly_round_n_times_one_minus_r(num_tokens, ratio):
    mask = TokenMask.random(8, num_tokens, ratio, torch.Generator().manual_seed(0))
    expected = round(num_tokens * (1 - ratio))
    assert mask.ids_keep.shape == (8, expected)
    assert torch.equal((~mask.removed).sum(dim=1), torch.full((8,), expected))
    # kept indices are distinct tokens
    assert all(len(set(row.tolist())) == expected for row in mask.ids_keep)


def test_samples_get_different_tokens():
    mask = TokenMask.random(8, 64, 0.5, torch.Generator().manual_seed(0))
    kept_sets = {frozenset(row.tolist()) for row in mask.ids_keep}
    assert len(kept_sets) == 8


def test_restore_is_the_inverse_permutation():
    mask = TokenMask.random(4, 32, 0.5, torch.Generator().manual_seed(1))
    arange = torch.arange(32).expand(4, -1)
    assert torch.equal(mask.ids_shuffle.gather(1, mask.ids_restore), arange)
    tokens = torch.randn(4, 32, 6)
    fill = torch.full((6,), 123.0)
    restored = mask.restore(mask.keep(tokens), fill)
    kept = ~mask.removed
    assert torch.equal(restored[kept], tokens[kept])  # every kept token back at its own position
    assert torch.all(restored[mask.removed] == 123.0)




def test_bad_ratio_is_refused():
    with pytest.raises(ValueError, match="mask_ratio"):
        num_kept_tokens(16, 1.0)


def test_encoder_sees_only_kept_tokens():
    model = make_tiny_model()
    seen = []
    hooks = [b.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1])) for b in model.encoder_blocks]
    decoder_seen = []
    hooks += [b.register_forward_pre_hook(lambda m, args: decoder_seen.append(args[0].shape[1]))
              for b in model.decoder_blocks]
    batch = make_batch()
    mask = TokenMask.random(4, 16, 0.5, torch.Generator().manual_seed(0))
    model(batch.latents, torch.rand(4), **batch.text.model_kwargs(), token_mask=mask)
    assert seen == [8] * len(model.encoder_blocks)  # 16 tokens, half kept
    assert decoder_seen == [16] * len(model.decoder_blocks)
    assert torch.equal(mask.removed.sum(dim=1), torch.full((4,), 8))
    for h in hooks:
        h.remove()


def test_removed_patches_cannot_influence_the_output():
    """Changing the pixels of removed tokens leaves the output unchanged; changing a kept one does not."""
    model = randomize_(make_tiny_model())
    batch = make_batch()
    mask = TokenMask.random(4, 16, 0.5, torch.Generator().manual_seed(0))
    x = batch.latents
    t = torch.full((4,), 0.3)
    base = model(x, t, batch.text.pooled, token_mask=mask).sample
    grid = mask.removed.reshape(4, 4, 4)  # 4x4 token grid, 4x4 pixel patches
    pixel_removed = grid.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None].expand_as(x)
    noise = torch.randn_like(x)
    changed_removed = model(torch.where(pixel_removed, x + noise, x), t, batch.text.pooled, token_mask=mask).sample
    changed_kept = model(torch.where(~pixel_removed, x + noise, x), t, batch.text.pooled, token_mask=mask).sample
    assert torch.allclose(changed_removed, base, atol=1e-6)
    assert (changed_kept - base).abs().max() > 1e-3


def test_decoder_restores_original_order():
    """The same removed set with the kept tokens in a different order gives the same output: the encoder is
    permutation-equivariant, so only a correct unshuffle can make the two agree token by token."""
    model = randomize_(make_tiny_model())
    batch = make_batch()
    mask = TokenMask.random(4, 16, 0.5, torch.Generator().manual_seed(3))
    # the same removed set, kept tokens first in token order
    reordered = TokenMask(mask.removed.to(torch.uint8).argsort(dim=1, stable=True), mask.num_kept)
    assert torch.equal(reordered.removed, mask.removed)
    assert not torch.equal(mask.ids_keep, reordered.ids_keep)
    t = torch.full((4,), -0.6)
    a = model(batch.latents, t, batch.text.pooled, token_mask=mask).sample
    b = model(batch.latents, t, batch.text.pooled, token_mask=reordered).sample
    assert torch.allclose(a, b, atol=1e-5)
