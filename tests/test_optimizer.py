"""`train.optimizer`: Muon's orthogonalised update, its AdamW half against torch's AdamW, and a Muon run that
learns and resumes exactly."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from eidos.config import default_config_path, load_config
from eidos.training.loop import train
from eidos.training.optimizer import MuonWithAdamW, block_matrices, orthogonalise
from tests.conftest import make_tiny_model, tiny_run_overrides


@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])
def test_orthogonalise_keeps_the_singular_vectors_and_flattens_the_singular_values(shape):
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(shape[0], shape[0]))
    v, _ = torch.linalg.qr(torch.randn(shape[1], shape[1]))
    k = min(shape)
    values = torch.logspace(-1, 1, k)  # condition number 100
    matrix = u[:, :k] @ torch.diag(values) @ v[:, :k].T
    result = orthogonalise(matrix[None])[0]
    projected = u[:, :k].T @ result @ v[:, :k]  # diagonal iff the singular vectors are kept
    off_diagonal = projected - torch.diag(torch.diagonal(projected))
    assert off_diagonal.norm() < 0.05 * torch.diagonal(projected).norm()  # bfloat16 iterations
    # Five quintic Newton-Schulz steps map the singular values into about [0.68, 1.13] (Jordan et al. 2024)
    assert torch.diagonal(projected).min() > 0.6 and torch.diagonal(projected).max() < 1.2


def test_the_adamw_group_steps_like_torch_adamw():
    torch.manual_seed(0)
    weights = [nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(3, 2))]
    reference = [nn.Parameter(w.detach().clone()) for w in weights]
    ours = MuonWithAdamW([], weights, lr=0.01, betas=(0.9, 0.99), weight_decay=0.1)
    theirs = torch.optim.AdamW(reference, lr=0.01, betas=(0.9, 0.99), weight_decay=0.1)
    for step in range(5):
        for params, optimizer in ((weights, ours), (reference, theirs)):
            loss = sum(((p - step) ** 2).sum() for p in params)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for a, b in zip(weights, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_muon_step_moves_each_matrix_by_a_fifth_of_the_learning_rate_in_rms():
    torch.manual_seed(0)
    matrices = [nn.Parameter(torch.randn(16, 48)), nn.Parameter(torch.randn(48, 16)), nn.Parameter(torch.randn(8, 8))]
    before = [m.detach().clone() for m in matrices]
    optimizer = MuonWithAdamW(matrices, [], lr=0.01)
    for m in matrices:
        m.grad = torch.randn_like(m) * 1e-3  # the size of the gradient does not matter, only its directions
    optimizer.step()
    for m, old in zip(matrices, before, strict=True):
        rms = (m.detach() - old).pow(2).mean().sqrt()
        assert 0.7 * 0.002 < rms < 1.15 * 0.002, rms


def test_muon_takes_the_block_matrices_and_refuses_other_shapes():
    model = make_tiny_model()
    hidden = block_matrices(model)
    assert hidden and all(p.ndim == 2 for p in hidden)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith(("encoder_blocks.", "decoder_blocks.")) for p in hidden)
    assert {id(model.patch_embed.weight), id(model.final_layer.linear.weight)}.isdisjoint(map(id, hidden))
    with pytest.raises(ValueError, match="2-D"):
        MuonWithAdamW([nn.Parameter(torch.zeros(3))], [], lr=0.01)


def test_a_muon_run_lowers_the_loss_and_resumes_exactly(tmp_path, synthetic_data):
    def overrides(folder):
        return tiny_run_overrides(folder, synthetic_data, max_steps=20) + [
            "train.optimizer=muon", "train.log_every=2", "train.checkpoint_every=10", "train.sample_every=20"]

    train(load_config(default_config_path(), overrides(tmp_path / "whole")))
    losses = [json.loads(line)["loss/fm"] for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-3:]) < 0.9 * sum(losses[:3]), losses  # AdamW: 0.875 here too
    shutil.copytree(tmp_path / "whole" / "checkpoint-10", tmp_path / "resumed" / "checkpoint-10")
    train(load_config(default_config_path(), overrides(tmp_path / "resumed")))
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(tmp_path / "whole" / "checkpoint-20" / name)
        b = load_file(tmp_path / "resumed" / "checkpoint-20" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
