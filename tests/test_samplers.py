"""Samplers against the closed-form transport of Gaussian data, and CFG bookkeeping."""

import pytest
import torch
from torch import nn

from eidos.batch import TextEmbeddings
from eidos.model import MaskDiTOutput
from eidos.sampling import consistency_times, sample_consistency, sample_flow_euler
from eidos.sampling.solvers import flow_velocity
from tests.conftest import GaussianVelocity

MU, SIGMA0 = 0.7, 0.4


def no_text(n):
    return TextEmbeddings(torch.zeros(n, 16))


def test_one_step_consistency_is_the_exact_transport():
    exact = GaussianVelocity(MU, SIGMA0)
    noise = torch.randn(8, 3, 16, 16, dtype=torch.float64)
    x0 = sample_consistency(exact, noise, no_text(8), num_steps=1)
    assert exact.calls == 1
    assert torch.allclose(x0, MU + SIGMA0 * noise, atol=1e-9)


@pytest.mark.parametrize("num_steps", [2, 4])
def test_multistep_consistency_samples_the_data_distribution(num_steps):
    exact = GaussianVelocity(MU, SIGMA0)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(4096, 3, 4, 4, generator=generator, dtype=torch.float64)
    x0 = sample_consistency(exact, noise, no_text(4096), num_steps=num_steps, generator=generator)
    assert exact.calls == num_steps
    assert x0.mean().item() == pytest.approx(MU, abs=0.005)
    assert x0.std().item() == pytest.approx(SIGMA0, abs=0.005)


def test_consistency_times():
    assert consistency_times(1) == [1.0]
    assert consistency_times(4) == [1.0, 0.75, 0.5, 0.25]
    with pytest.raises(ValueError, match="num_steps"):
        consistency_times(0)


def test_flow_euler_converges_to_the_exact_transport_at_first_order():
    exact = GaussianVelocity(MU, SIGMA0)
    noise = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    target = MU + SIGMA0 * noise
    errors = {n: (sample_flow_euler(exact, noise.double(), no_text(4), num_steps=n) - target).abs().max().item()
              for n in (25, 50, 400)}
    assert errors[400] < 1e-2
    assert 1.6 < errors[25] / errors[50] < 2.4  # halving the step halves the error (Euler)


class SignModel(nn.Module):
    """+1 everywhere for conditional samples, -1 for dropped ones; counts forwards and batch sizes."""

    def __init__(self):
        super().__init__()
        self.batch_sizes = []

    def forward(self, x, t, text_pooled=None, drop_text=None, **_):
        self.batch_sizes.append(x.shape[0])
        sign = torch.ones(x.shape[0]) if drop_text is None else 1 - 2 * drop_text.float()
        sign = sign * text_pooled[:, 0]  # negative prompts carry their own value
        return MaskDiTOutput(sample=sign.reshape(-1, 1, 1, 1).expand_as(x).clone())


def test_flow_cfg_combines_both_branches_in_one_batched_forward():
    model = SignModel()
    x = torch.zeros(3, 1, 4, 4)
    text = TextEmbeddings(torch.ones(3, 16))
    v = flow_velocity(model, x, 0.5, text, guidance_scale=3.0)
    assert model.batch_sizes == [6]
    assert torch.allclose(v, torch.full_like(v, -1 + 3.0 * 2))
    negative = TextEmbeddings(torch.full((3, 16), 0.5))
    v = flow_velocity(model, x, 0.5, text, guidance_scale=3.0, negative_text=negative)
    assert torch.allclose(v, torch.full_like(v, 0.5 + 3.0 * 0.5))
    model.batch_sizes.clear()
    sample_flow_euler(model, x, text, num_steps=5, guidance_scale=2.0)
    assert model.batch_sizes == [6] * 5
