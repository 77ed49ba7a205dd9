"""Objectives against closed forms (Gaussian data), and the total loss on the real model."""

import math

import pytest
import torch

from eidos.batch import Batch, TextEmbeddings
from eidos.config import ObjectiveConfig, TimeDistribution
from eidos.objectives import FACMObjective, guided_velocity
from eidos.objectives.consistency import (
    adaptive_consistency_loss,
    consistency_target,
    consistency_weight,
    velocity_and_time_derivative,
)
from eidos.objectives.flow_matching import velocity_loss
from eidos.objectives.mae import masked_reconstruction_loss
from eidos.objectives.path import conditional_velocity, interpolate
from eidos.objectives.time_sampling import sample_times
from tests.conftest import GaussianVelocity, make_batch, make_tiny_model, randomize_

MU, SIGMA0 = 0.7, 0.4


def test_conditional_velocity_regresses_to_the_analytic_marginal_velocity():
    """E[eps - x0 | x_s] is linear in x_s for Gaussian data; a least-squares fit of the training target on
    x_s recovers the analytic slope and intercept of v(x, s), checking the path convention end to end."""
    generator = torch.Generator().manual_seed(0)
    exact = GaussianVelocity(MU, SIGMA0)
    for s_value in (0.2, 0.5, 0.9):
        n = 400_000
        x0 = MU + SIGMA0 * torch.randn(n, generator=generator, dtype=torch.float64)
        eps = torch.randn(n, generator=generator, dtype=torch.float64)
        s = torch.full((n,), s_value, dtype=torch.float64)
        x_s, u = interpolate(x0, eps, s), conditional_velocity(x0, eps)
        design = torch.stack([x_s, torch.ones_like(x_s)], dim=1)
        slope, intercept = torch.linalg.lstsq(design, u[:, None]).solution[:, 0]
        s_t = torch.tensor(s_value, dtype=torch.float64)
        true_intercept = exact.instantaneous(torch.tensor(0.0, dtype=torch.float64), s_t)
        true_slope = exact.instantaneous(torch.tensor(1.0, dtype=torch.float64), s_t) - true_intercept
        assert slope.item() == pytest.approx(true_slope.item(), abs=0.01)
        assert intercept.item() == pytest.approx(true_intercept.item(), abs=0.01)


@pytest.mark.parametrize("tangent", ["jvp", "finite_difference"])
def test_consistency_target_is_the_exact_average_velocity(tangent):
    """With the exact average velocity G and the true marginal velocity as tangent, the identity
    G = u - s dG/ds holds, so the FACM target equals G (nothing to correct)."""
    exact = GaussianVelocity(MU, SIGMA0)
    x = torch.randn(8, 3, 16, 16, dtype=torch.float64) * 0.8 + 0.2
    s = torch.linspace(0.05, 0.95, 8, dtype=torch.float64)
    u = exact.instantaneous(x, s.reshape(-1, 1, 1, 1))

    def fn(x_in, t, forward_mode=False):
        return exact(x_in, t).sample

    G, dG = velocity_and_time_derivative(fn, x, s, u, tangent, step=1e-5)
    target = consistency_target(G, dG.double(), u, s)
    assert torch.allclose(target.double(), G, atol=1e-6)
    # a wrong tangent (the conditional velocity of another sample) gives a non-zero correction
    wrong = consistency_target(G, dG.double(), u + 0.3, s)
    assert (wrong.double() - G).abs().max() > 1e-2


def test_consistency_target_clips_and_scales_by_alpha():
    G = torch.zeros(2, 1, 4, 4)
    u = torch.full_like(G, 5.0)  # residual G - (u - s dG) = -5, clipped to -1
    s = torch.tensor([0.19, 0.75])
    target = consistency_target(G, torch.zeros_like(G), u, s)
    alpha = 1 - torch.sqrt(1 - s)
    assert torch.allclose(target[:, 0, 0, 0], alpha)  # G - alpha * (-1)


def test_adaptive_loss_and_weight():
    G = torch.zeros(2, 3, 8, 8, requires_grad=True)
    target = torch.ones(2, 3, 8, 8) * torch.tensor([0.5, 2.0]).reshape(2, 1, 1, 1)
    visible = torch.ones(2, 4, dtype=torch.bool)
    loss = adaptive_consistency_loss(G, target, visible, patch_size=4, eps=1e-3)
    e = torch.tensor([0.25, 4.0])
    assert torch.allclose(loss, e / torch.sqrt(e + 1e-3))
    assert consistency_weight(torch.tensor([0.0, 1.0])).tolist() == pytest.approx([0.0, 1.0])


def test_guided_velocity_applies_cfg_only_inside_interval_and_for_kept_text():
    u_c, u_unc = torch.ones(4, 1, 2, 2), torch.zeros(4, 1, 2, 2)
    s = torch.tensor([0.1, 0.5, 0.9, 0.5])
    dropped = torch.tensor([False, False, False, True])
    u = guided_velocity(u_c, u_unc, s, dropped, 1.75, (0.0, 0.75))
    assert u[:, 0, 0, 0].tolist() == pytest.approx([1.75, 1.75, 1.0, 1.0])


def test_time_samplers():
    generator = torch.Generator().manual_seed(0)
    s = sample_times(100_000, ObjectiveConfig().consistency_times, generator)  # FACM's lognormal(-0.8, 1.6)
    assert 0 < s.min() and s.max() < 1
    assert s.median().item() == pytest.approx(2 / math.pi * math.atan(math.exp(-0.8)), abs=0.01)
    s = sample_times(100_000, TimeDistribution("logit_normal", 0.0, 1.0), generator)
    assert s.median().item() == pytest.approx(0.5, abs=0.01)


def test_velocity_loss_values_and_visibility():
    target = torch.randn(2, 3, 8, 8)
    visible = torch.tensor([[True, True, False, False], [True, True, True, True]])
    assert torch.allclose(velocity_loss(target, target, visible, 4), torch.zeros(2), atol=1e-6)
    # twice the target: squared error = mean(target^2) over visible tokens, cosine term 0
    loss = velocity_loss(2 * target, target, torch.ones(2, 4, dtype=torch.bool), 4)
    assert torch.allclose(loss, target.pow(2).mean(dim=(1, 2, 3)), atol=1e-5)
    # predictions at invisible tokens do not count
    pred = target.clone()
    pred[0, :, 4:, :] += 10  # bottom half = tokens 2, 3 of sample 0
    assert velocity_loss(pred, target, visible, 4)[0].item() == pytest.approx(0.0, abs=1e-6)


def test_mae_loss_targets_normalised_patches_at_removed_tokens_only():
    x_s = torch.randn(2, 3, 8, 8) * 3 + 1
    removed = torch.tensor([[False, True, False, True], [True, False, False, False]])
    patches = x_s.unfold(2, 4, 4).unfold(3, 4, 4)  # (B, C, 2, 2, 4, 4)
    mean = patches.mean(dim=(1, 4, 5), keepdim=True)
    std = patches.var(dim=(1, 4, 5), keepdim=True).add(1e-6).sqrt()
    normalised = ((patches - mean) / std).permute(0, 1, 2, 4, 3, 5).reshape(2, 3, 8, 8)
    assert masked_reconstruction_loss(normalised, x_s, removed, 4).abs().max() < 1e-5
    # a zero prediction costs the mean square of a normalised patch: (n - 1) / n with the unbiased variance
    expected = 47 / 48
    assert masked_reconstruction_loss(torch.zeros_like(x_s), x_s, removed, 4).tolist() == pytest.approx([expected] * 2)
    # visible tokens are free
    pred = normalised.clone()
    pred[:, :, :4, :4] = 99.0  # token 0, visible in sample 0, removed in sample 1
    loss = masked_reconstruction_loss(pred, x_s, removed, 4)
    assert loss[0].item() == pytest.approx(0.0, abs=1e-5) and loss[1].item() > 100


def test_objective_is_deterministic_given_the_generator_and_reports_parts():
    model = randomize_(make_tiny_model())  # a zero-initialised teacher would give an all-zero consistency target
    objective = FACMObjective(ObjectiveConfig(mae_weight=0.1), patch_size=4, mask_ratio=0.5, teacher=model)
    batch = make_batch()
    loss_a, parts_a = objective(model, batch, torch.Generator().manual_seed(5))
    loss_b, parts_b = objective(model, batch, torch.Generator().manual_seed(5))
    _, parts_c = objective(model, batch, torch.Generator().manual_seed(6))
    assert set(parts_a) == {"total", "fm", "cm", "mae"}
    assert torch.equal(loss_a, loss_b) and parts_a["total"] != parts_c["total"]
    assert all(v > 0 for v in parts_a.values())
    assert parts_a["total"].item() == pytest.approx(
        (parts_a["fm"] + parts_a["cm"] + 0.1 * parts_a["mae"]).item(), rel=1e-6)


def test_plain_flow_matching_runs_no_consistency_forward():
    exact = GaussianVelocity(MU, SIGMA0)
    batch = Batch(MU + SIGMA0 * torch.randn(4, 3, 16, 16), TextEmbeddings(torch.zeros(4, 16)))
    FACMObjective(ObjectiveConfig(consistency_weight=0.0, guidance_scale=1.0), patch_size=4)(exact, batch)
    assert exact.calls == 1
    FACMObjective(ObjectiveConfig(consistency_teacher="sample", guidance_scale=1.0), patch_size=4)(exact, batch)
    assert exact.calls == 1 + 3  # flow + G + the no-grad JVP pass
    FACMObjective(ObjectiveConfig(consistency_teacher="sample", guidance_scale=1.75), patch_size=4)(exact, batch)
    assert exact.calls == 4 + 5  # flow + unconditional (anchor) + unconditional (share) + G + JVP pass


def test_objective_reuses_one_mask_for_all_forwards():
    model = make_tiny_model()
    seen = []
    original = model.forward

    def spy(x, *args, token_mask=None, **kwargs):
        seen.append(torch.zeros(x.shape[0], 16, dtype=torch.bool) if token_mask is None else token_mask.removed)
        return original(x, *args, token_mask=token_mask, **kwargs)

    model.forward = spy
    generator = torch.Generator().manual_seed(0)
    sample_teacher = ObjectiveConfig(consistency_teacher="sample", consistency_batch_fraction=1.0)
    FACMObjective(sample_teacher, patch_size=4, mask_ratio=0.5)(model, make_batch(), generator)
    assert len(seen) == 5 and all(torch.equal(m, seen[0]) for m in seen) and seen[0].any()
    # the flow-branch teacher sees every token (its velocity is the consistency target's tangent everywhere)
    seen.clear()
    FACMObjective(ObjectiveConfig(consistency_batch_fraction=1.0), patch_size=4, mask_ratio=0.5, teacher=model)(
        model, make_batch(), generator)
    flow, teacher, average, jvp = seen
    assert torch.equal(flow, average) and torch.equal(flow, jvp) and flow.any()
    assert not teacher.any() and len(teacher) == 2 * len(flow)


@pytest.mark.parametrize("mask_ratio", [0.0, 0.5])
def test_overfitting_one_batch_drives_the_loss_down(mask_ratio):
    """Same batch, same noise/times/mask every step (generator re-seeded): a deterministic regression."""
    torch.manual_seed(0)
    model = make_tiny_model()
    batch = make_batch()
    objective = FACMObjective(ObjectiveConfig(guidance_scale=1.0, text_dropout=0.0), patch_size=4,
                              mask_ratio=mask_ratio, teacher=model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(200):
        loss, _ = objective(model, batch, torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    start, end = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print(f"mask {mask_ratio}: loss {start:.3f} -> {end:.3f}")
    assert end < start / 2.5


def test_bad_objective_config_is_refused():
    with pytest.raises(ValueError, match="objective.tangent"):
        ObjectiveConfig(tangent="magic")
    with pytest.raises(ValueError, match="objective.guidance_interval"):
        ObjectiveConfig(guidance_interval=(0.8, 0.2))
    with pytest.raises(ValueError, match="mask_ratio"):
        FACMObjective(ObjectiveConfig(), patch_size=4, mask_ratio=1.0)



def test_velocity_loss_without_the_cosine_term_is_the_token_mean_squared_error():
    pred, target = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    visible = torch.ones(2, 16, dtype=torch.bool)
    plain = velocity_loss(pred, target, visible, 4, cosine_weight=0.0)
    assert torch.allclose(plain, (pred - target).pow(2).mean(dim=(1, 2, 3)), atol=1e-6)
    half = velocity_loss(pred, target, visible, 4, cosine_weight=0.5)
    full = velocity_loss(pred, target, visible, 4)
    assert torch.allclose(half, (plain + full) / 2, atol=1e-6) and (full > plain).all()
