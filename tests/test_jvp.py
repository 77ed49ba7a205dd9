"""The exact JVP of the model against central finite differences, and gradients through the JVP primal."""

import torch

from eidos.model import TokenMask
from eidos.objectives.consistency import velocity_and_time_derivative
from tests.conftest import make_batch, make_tiny_model, randomize_


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def setup(dtype):
    model = randomize_(make_tiny_model(cross_attention=True), std=0.1).to(dtype)
    batch = make_batch()
    text = {k: (v.to(dtype) if v is not None and v.is_floating_point() else v)
            for k, v in batch.text.model_kwargs().items()}
    mask = TokenMask.random(4, 16, 0.5, torch.Generator().manual_seed(0))

    def fn(x, t):
        return model(x, t, **text, token_mask=mask, math_attention=True).sample

    x = batch.latents.to(dtype)
    s = torch.tensor([0.1, 0.4, 0.7, 0.95], dtype=dtype)
    u = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return model, fn, x, s, u


def central_difference(fn, x, s, u, h):
    with torch.no_grad():
        return (fn(x + h * u, s + h) - fn(x - h * u, s - h)) / (2 * h)


def test_jvp_matches_central_differences_float64():
    _, fn, x, s, u = setup(torch.float64)
    _, tangent = torch.func.jvp(fn, (x, s), (u, torch.ones_like(s)))
    error = relative_error(central_difference(fn, x, s, u, 1e-5), tangent)
    print(f"float64 JVP vs central difference: relative error {error:.2e}")
    assert tangent.abs().max() > 1e-2  # the derivative is not trivially zero
    assert error < 1e-7


def test_jvp_matches_central_differences_float32():
    _, fn, x, s, u = setup(torch.float32)
    _, tangent = torch.func.jvp(fn, (x, s), (u, torch.ones_like(s)))
    error = relative_error(central_difference(fn, x, s, u, 1e-3), tangent)
    print(f"float32 JVP vs central difference: relative error {error:.2e}")
    assert error < 2e-3


def test_finite_difference_tangent_option_agrees_with_jvp():
    _, fn, x, s, u = setup(torch.float32)
    G_jvp, dG_jvp = velocity_and_time_derivative(fn, x, s, u, "jvp")
    G_fd, dG_fd = velocity_and_time_derivative(fn, x, s, u, "finite_difference", step=1e-3)
    assert torch.allclose(G_jvp, G_fd, atol=1e-5)
    assert relative_error(dG_fd, dG_jvp) < 2e-3


def test_gradient_through_jvp_primal_equals_plain_forward_gradient():
    model, fn, x, s, u = setup(torch.float64)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    primal, _ = torch.func.jvp(fn, (x, s), (u, torch.ones_like(s)))
    (primal * weights).sum().backward()
    via_jvp = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    (fn(x, s) * weights).sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    assert via_jvp.keys() == plain.keys() and len(plain) > 20
    for name in plain:
        assert torch.allclose(via_jvp[name], plain[name], rtol=1e-10, atol=1e-12), name
