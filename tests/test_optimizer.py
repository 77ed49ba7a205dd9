"""`train.optimizer`: torch's Muon and AdamW as one optimizer (state dict, learning rate, reset), Muon's update
size, its batched Newton-Schulz iterations in the run's precision, and a Muon run that learns and resumes exactly."""

import copy
import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from eidos.config import default_config_path, load_config
from eidos.training.loop import train
from eidos.training.muon import BatchedMuon, newton_schulz
from eidos.training.optimizer import MuonWithAdamW, block_matrices
from eidos.training.setup import set_up
from tests.conftest import make_tiny_model, tiny_run_overrides


def _quadratic_steps(optimizers, params, steps, start=0):
    for step in range(start, start + steps):
        loss = sum(((p - step) ** 2).sum() for p in params)
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()


def _ours_and_torchs(matrices, others):
    """MuonWithAdamW over the parameters, and torch's Muon and AdamW over copies of them, with the same settings."""
    ref_matrices, ref_others = ([nn.Parameter(p.detach().clone()) for p in group] for group in (matrices, others))
    ours = MuonWithAdamW(matrices, others, lr=0.01, betas=(0.9, 0.99), weight_decay=0.1)
    muon = torch.optim.Muon(ref_matrices, lr=0.01, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW(ref_others, lr=0.01, betas=(0.9, 0.99), weight_decay=0.1)
    return ours, (muon, adamw), (ref_matrices, ref_others)


def test_the_combined_optimizer_steps_like_torch_muon_and_adamw_and_keeps_their_state_in_its_state_dict():
    torch.manual_seed(0)
    matrices = [nn.Parameter(torch.randn(6, 4)), nn.Parameter(torch.randn(4, 4))]
    others = [nn.Parameter(torch.randn(5))]
    ours, (muon, adamw), (ref_matrices, ref_others) = _ours_and_torchs(matrices, others)
    _quadratic_steps([ours], matrices + others, 3)
    _quadratic_steps([muon, adamw], ref_matrices + ref_others, 3)
    # A fresh optimizer loaded from the state dict (as a resumed run is) carries on identically, at the learning
    # rate the schedule writes into its groups.
    saved = ours.state_dict()
    kinds = {key for per_param in saved["state"].values() for key in per_param}
    assert len(saved["state"]) == 3 and {"momentum_buffer", "exp_avg"} <= kinds
    resumed = MuonWithAdamW(matrices, others, lr=0.5, betas=(0.9, 0.99), weight_decay=0.1)
    resumed.load_state_dict(saved)
    for optimizer in (resumed, muon, adamw):
        for group in optimizer.param_groups:
            group["lr"] = 0.005
    _quadratic_steps([resumed], matrices + others, 3, start=3)
    _quadratic_steps([muon, adamw], ref_matrices + ref_others, 3, start=3)
    for a, b in zip(matrices + others, ref_matrices + ref_others, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    resumed.state.clear()  # a stage with reset_optimizer: both halves start afresh
    _quadratic_steps([resumed], matrices + others, 1)
    assert all(resumed.state[p]["step"].item() == 1 for p in others)


def test_a_stage_can_hand_the_matrices_to_adamw_afresh_and_back_to_muon():
    torch.manual_seed(0)
    matrices, others = [nn.Parameter(torch.randn(6, 4))], [nn.Parameter(torch.randn(5))]
    ours, (muon, adamw), (ref_matrices, ref_others) = _ours_and_torchs(matrices, others)
    _quadratic_steps([ours], matrices + others, 2)
    _quadratic_steps([muon, adamw], ref_matrices + ref_others, 2)
    # The switch: the matrices start a fresh AdamW at the groups' learning rate; the others keep their moments.
    ours.use_for_matrices("adamw", fresh=True)
    matrices_adamw = torch.optim.AdamW(ref_matrices, lr=0.004, betas=(0.9, 0.99), weight_decay=0.1)
    for optimizer in (ours, adamw):
        for group in optimizer.param_groups:
            group["lr"] = 0.004
    assert "momentum_buffer" not in ours.state[matrices[0]]
    _quadratic_steps([ours], matrices + others, 3, start=2)
    _quadratic_steps([matrices_adamw, adamw], ref_matrices + ref_others, 3, start=2)
    for a, b in zip(matrices + others, ref_matrices + ref_others, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert ours.state[matrices[0]]["step"].item() == 3 and ours.state[others[0]]["step"].item() == 5
    # Its state dict carries the AdamW moments of the matrices, so a resumed stage goes on with them.
    resumed = MuonWithAdamW(matrices, others, lr=0.5, betas=(0.9, 0.99), weight_decay=0.1)
    resumed.load_state_dict(copy.deepcopy(ours.state_dict()))
    resumed.use_for_matrices("adamw", fresh=False)
    resumed.param_groups[0]["lr"] = resumed.param_groups[1]["lr"] = 0.004
    _quadratic_steps([resumed], matrices + others, 1, start=5)
    _quadratic_steps([matrices_adamw, adamw], ref_matrices + ref_others, 1, start=5)
    torch.testing.assert_close(matrices[0], ref_matrices[0], rtol=0, atol=0)
    # And back: Muon's momentum starts afresh.
    resumed.use_for_matrices("muon", fresh=True)
    muon = torch.optim.Muon(ref_matrices, lr=0.004, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    _quadratic_steps([resumed], matrices, 2, start=6)
    _quadratic_steps([muon], ref_matrices, 2, start=6)
    torch.testing.assert_close(matrices[0], ref_matrices[0], rtol=0, atol=0)


def test_a_checkpoint_of_the_earlier_hand_written_muon_resumes_and_a_copy_keeps_its_halves_linked():
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(6, 4)), nn.Parameter(torch.randn(5))]
    original = MuonWithAdamW(params[:1], params[1:], lr=0.01)
    _quadratic_steps([original], params, 2)
    saved = copy.deepcopy(original.state_dict())  # as read back from a file: not the live tensors
    # The earlier format: the same per-parameter state with an int step, groups marked "muon", no torch options.
    earlier = {
        "state": {i: {k: int(v) if k == "step" else v for k, v in entry.items()}
                  for i, entry in saved["state"].items()},
        "param_groups": [{"params": group["params"], "lr": 0.01, "betas": (0.9, 0.99), "weight_decay": 0.0,
                          "momentum": 0.95, "eps": 1e-8, "muon": index == 0}
                         for index, group in enumerate(saved["param_groups"])],
    }
    copies = [nn.Parameter(p.detach().clone()) for p in params]
    resumed = MuonWithAdamW(copies[:1], copies[1:], lr=0.01)
    resumed.load_state_dict(earlier)
    _quadratic_steps([original], params, 2, start=2)
    _quadratic_steps([resumed], copies, 2, start=2)
    for a, b in zip(params, copies, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    restored = pickle.loads(pickle.dumps(resumed))
    assert all(part.state is restored.state for part in restored._parts)
    linked = [group for part in restored._parts for group in part.param_groups]
    assert len(linked) == 2 and all(a is b for a, b in zip(linked, restored.param_groups, strict=True))


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
    with pytest.raises(ValueError, match="2D"):
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


def test_a_stage_that_trains_the_matrices_with_adamw_resumes_exactly_at_and_after_its_switch(tmp_path,
                                                                                              synthetic_data):
    stages = [{"name": "flow", "fraction": 0.5, "mask_ratio": 0.0, "learning_rate": 2e-3, "consistency": False},
              {"name": "consistency", "fraction": 0.5, "mask_ratio": 0.0, "learning_rate": 2e-4, "optimizer": "adamw"}]

    def run(folder):
        train(load_config(default_config_path(), tiny_run_overrides(folder, synthetic_data, max_steps=20) + [
            "train.optimizer=muon", f"train.stages={json.dumps(stages)}", "train.checkpoint_every=5",
            "train.sample_every=100", "train.checkpoints_total_limit=4"]))

    def matrix_state(checkpoint):  # the first group is Muon's: its first parameter is a block matrix
        return torch.load(checkpoint / "optimizer.bin", weights_only=True)["state"][0]

    run(tmp_path / "whole")
    assert "momentum_buffer" in matrix_state(tmp_path / "whole" / "checkpoint-10")
    switched = matrix_state(tmp_path / "whole" / "checkpoint-20")
    assert "momentum_buffer" not in switched and switched["step"].item() == 10  # a fresh AdamW at step 10
    for start in (10, 15):  # resumed where the stage begins, and inside it
        folder = tmp_path / f"from-{start}"
        shutil.copytree(tmp_path / "whole" / f"checkpoint-{start}", folder / f"checkpoint-{start}")
        if start > 10:  # the stage's frozen teacher, exported when it began
            shutil.copytree(tmp_path / "whole" / "teacher-10", folder / "teacher-10")
        run(folder)
        for name in ("model.safetensors", "ema.safetensors"):
            a = load_file(tmp_path / "whole" / "checkpoint-20" / name)
            b = load_file(folder / "checkpoint-20" / name)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (start, name)


JORDAN = (3.4445, -4.775, 2.0315)


def _newton_schulz_one_by_one(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The quintic iteration written out for one matrix, in float64 (the reference)."""
    a, b, c = JORDAN
    x = matrix.double()
    x = x.T if x.shape[0] > x.shape[1] else x
    x = x / x.norm()
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if matrix.shape[0] > matrix.shape[1] else x


def test_batched_newton_schulz_orthogonalises_each_matrix_like_the_iteration_written_out_for_one():
    torch.manual_seed(0)
    for shape in ((3, 24, 8), (2, 8, 24), (4, 16, 16)):  # tall, wide, square
        matrices = torch.randn(shape)
        batched = newton_schulz(matrices, JORDAN, 5, 1e-7, torch.float32)
        assert batched.shape == shape and batched.dtype == torch.float32
        for one, result in zip(matrices, batched, strict=True):
            torch.testing.assert_close(result.double(), _newton_schulz_one_by_one(one), rtol=0, atol=2e-5)
            # Near-orthogonal, with the input's singular directions: U V^T of the input, up to the spread of the
            # singular values the quintic leaves (its coefficients trade exactness for speed).
            singular = torch.linalg.svdvals(result)
            assert singular.min() > 0.6 and singular.max() < 1.25, singular
            u, _, vh = torch.linalg.svd(one, full_matrices=False)
            assert torch.nn.functional.cosine_similarity((u @ vh).flatten(), result.flatten(), dim=0) > 0.98
    in_bf16 = newton_schulz(torch.randn(2, 8, 24), JORDAN, 5, 1e-7, torch.bfloat16)
    assert in_bf16.dtype == torch.bfloat16


def test_batched_muon_steps_like_torch_muon_in_bf16_and_closer_to_exact_in_float32():
    torch.manual_seed(0)
    shapes = [(6, 4), (6, 4), (4, 6), (8, 8), (16, 48)]  # two of one shape: one batch of iterations
    start = [torch.randn(shape, dtype=torch.float64) for shape in shapes]
    options = {"lr": 0.01, "weight_decay": 0.1, "adjust_lr_fn": "match_rms_adamw"}

    def trained(make, dtype=torch.float32):
        params = [nn.Parameter(p.to(dtype)) for p in start]
        _quadratic_steps([make(params)], params, 4)
        return params

    torch_muon = trained(lambda ps: torch.optim.Muon(ps, **options))
    ours_bf16 = trained(lambda ps: BatchedMuon(ps, **options))
    for a, b in zip(ours_bf16, torch_muon, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # torch's algorithm, to the bit
    # Float32 iterations land far nearer the exact trajectory (everything in float64) than bf16 ones.
    ours_float32 = trained(lambda ps: BatchedMuon(ps, newton_schulz_dtype=torch.float32, **options))
    exact = trained(lambda ps: BatchedMuon(ps, newton_schulz_dtype=torch.float64, **options), torch.float64)
    for in_float32, in_bf16, reference in zip(ours_float32, torch_muon, exact, strict=True):
        error_float32 = (in_float32.double() - reference).abs().max()
        error_bf16 = (in_bf16.double() - reference).abs().max()
        assert error_float32 < 0.02 * error_bf16, (error_float32, error_bf16)
    restored = copy.deepcopy(BatchedMuon([nn.Parameter(torch.randn(4, 4))], newton_schulz_dtype=torch.float32))
    assert restored.newton_schulz_dtype == torch.float32  # copies and pickles keep the precision


@pytest.mark.parametrize("precision, expected", [("no", torch.float32), ("bf16", torch.bfloat16)])
def test_a_run_orthogonalises_in_the_precision_it_trains_in(tmp_path, synthetic_data, precision, expected):
    config = load_config(default_config_path(), tiny_run_overrides(tmp_path / "run", synthetic_data) + [
        "train.optimizer=muon", f"train.mixed_precision='{precision}'"])
    run = set_up(config)
    try:
        assert run.state.mixed_precision == precision
        assert run.optimizer.optimizer._muon.newton_schulz_dtype == expected
    finally:
        run.data.close()
        run.accelerator.end_training()


def test_a_step_with_a_closure_returns_its_loss_and_steps_on_the_gradients_it_computes():
    torch.manual_seed(0)
    matrix, vector = nn.Parameter(torch.randn(4, 6)), nn.Parameter(torch.randn(3))
    optimizer = MuonWithAdamW([matrix], [vector], lr=0.01)
    before = [matrix.detach().clone(), vector.detach().clone()]

    def closure():
        optimizer.zero_grad()
        loss = (matrix ** 2).sum() + (vector ** 2).sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert torch.isclose(loss, sum((p ** 2).sum() for p in before))
    assert not torch.equal(matrix, before[0]) and not torch.equal(vector, before[1])
