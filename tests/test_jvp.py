"""The exact tangent dG/ds: a plain forward for G plus a no-grad forward-mode pass for dG/ds (issue 15), against
float64 JVPs, central differences, the previous shared-graph JVP and what autograd keeps for backward."""

from functools import partial
from unittest import mock

import torch

from benchmarks.train_step import shared_graph_jvp
from eidos.batch import Batch, TextEmbeddings
from eidos.config import ObjectiveConfig
from eidos.model import TokenMask
from eidos.objectives import facm
from eidos.objectives.consistency import velocity_and_time_derivative
from tests.conftest import make_batch, make_tiny_model, randomize_


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def setup(dtype):
    torch.manual_seed(0)  # the same network in every precision
    model = randomize_(make_tiny_model(cross_attention=True), std=0.1).to(dtype)
    batch = make_batch()
    text = {k: (v.to(dtype) if v is not None and v.is_floating_point() else v)
            for k, v in batch.text.model_kwargs().items()}
    mask = TokenMask.random(4, 16, 0.5, torch.Generator().manual_seed(0))

    def fn(x, t, forward_mode=False):
        return model(x, t, **text, token_mask=mask, math_attention=forward_mode).sample

    x = batch.latents.to(dtype)
    s = torch.tensor([0.1, 0.4, 0.7, 0.95], dtype=dtype)
    u = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    return model, fn, x, s, u


def central_difference(fn, x, s, u, h):
    with torch.no_grad():
        return (fn(x + h * u, s + h) - fn(x - h * u, s - h)) / (2 * h)


def test_forward_mode_jvp_matches_central_differences_float64():
    _, fn, x, s, u = setup(torch.float64)
    _, tangent = torch.func.jvp(partial(fn, forward_mode=True), (x, s), (u, torch.ones_like(s)))
    error = relative_error(central_difference(fn, x, s, u, 1e-5), tangent)
    assert tangent.abs().max() > 1e-2  # the derivative is not trivially zero
    assert error < 1e-7


def test_exact_tangent_equals_the_float64_jvp_of_the_explicit_attention_model():
    _, fn, x, s, u = setup(torch.float64)
    reference_G, reference = torch.func.jvp(partial(fn, forward_mode=True), (x, s), (u, torch.ones_like(s)))
    G, dG = velocity_and_time_derivative(fn, x, s, u, "jvp")
    assert G.requires_grad and not dG.requires_grad
    assert relative_error(dG, reference) < 1e-9
    assert relative_error(G, reference_G) < 1e-12


def test_exact_tangent_matches_central_differences_float32():
    _, fn, x, s, u = setup(torch.float32)
    _, dG = velocity_and_time_derivative(fn, x, s, u, "jvp")
    assert relative_error(dG, central_difference(fn, x, s, u, 1e-3)) < 2e-3


def test_finite_difference_tangent_option_agrees_with_jvp():
    _, fn, x, s, u = setup(torch.float32)
    G_jvp, dG_jvp = velocity_and_time_derivative(fn, x, s, u, "jvp")
    G_fd, dG_fd = velocity_and_time_derivative(fn, x, s, u, "finite_difference", step=1e-3)
    assert torch.allclose(G_jvp, G_fd, atol=1e-5)
    assert relative_error(dG_fd, dG_jvp) < 2e-3


def saved_for_backward_bytes(compute) -> int:
    """Bytes of the tensors autograd saves for backward while `compute` runs."""
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        compute()
    return sum(saved)


def test_the_tangent_pass_saves_nothing_for_backward():
    """The exact tangent keeps for backward exactly what one plain forward keeps; the shared-graph JVP kept
    the explicit attention's maps and every tangent too."""
    _, fn, x, s, u = setup(torch.float32)
    plain = saved_for_backward_bytes(lambda: fn(x, s))
    decoupled = saved_for_backward_bytes(lambda: velocity_and_time_derivative(fn, x, s, u, "jvp"))
    shared = saved_for_backward_bytes(lambda: shared_graph_jvp(fn, x, s, u))
    assert plain > 0 and decoupled == plain
    assert shared > 1.5 * plain


def double_batch() -> Batch:
    batch = make_batch(size=6)
    text = batch.text
    return Batch(batch.latents.double(), TextEmbeddings(text.pooled.double(), text.tokens.double(), text.mask))


def loss_gradients(objective, model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss, _ = objective(model, batch, torch.Generator().manual_seed(3))
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_loss_gradients_equal_the_shared_graph_jvp():
    """The FACM loss's gradients with the decoupled tangent equal those of the previous single JVP, whose
    primal carried the gradients (float64, masked tokens, guidance from the frozen teacher)."""
    model = randomize_(make_tiny_model(cross_attention=True), std=0.1).double()
    teacher = randomize_(make_tiny_model(cross_attention=True), std=0.1, seed=1).double()
    config = ObjectiveConfig(tangent="jvp", consistency_batch_fraction=0.5)
    objective = facm.FACMObjective(config, patch_size=4, mask_ratio=0.5, teacher=teacher)
    batch = double_batch()
    decoupled = loss_gradients(objective, model, batch)
    with mock.patch.object(facm, "velocity_and_time_derivative", shared_graph_jvp):
        shared = loss_gradients(objective, model, batch)
    assert decoupled.keys() == shared.keys() and len(shared) > 20
    for name in shared:
        assert torch.allclose(decoupled[name], shared[name], rtol=1e-9, atol=1e-12), name


def test_float32_tangent_precision_is_exact_under_bf16_autocast():
    """Under bf16 autocast the JVP pass runs in bf16 by default (relative error ~1e-2 on this toy) or, with
    objective.tangent_precision=float32, exact to float32 rounding."""
    _, fn64, x, s, u = setup(torch.float64)
    _, reference = torch.func.jvp(partial(fn64, forward_mode=True), (x, s), (u, torch.ones_like(s)))
    _, fn, x, s, u = setup(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, autocast = velocity_and_time_derivative(fn, x, s, u, "jvp", precision="autocast")
        _, exact = velocity_and_time_derivative(fn, x, s, u, "jvp", precision="float32")
    assert exact.dtype == autocast.dtype == torch.float32
    assert relative_error(exact, reference) < 1e-5 < 1e-3 < relative_error(autocast, reference)
