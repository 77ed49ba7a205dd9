"""Runs that must not be lost: preemption signals, non-finite steps, half-written or hostile checkpoints,
and two-process (gloo DDP) training with resume."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eidos.config import default_config_path, load_config
from eidos.training import loop, report, step
from eidos.training.checkpoint import latest_checkpoint, list_checkpoints
from eidos.training.faults import NonFiniteTraining
from tests.conftest import tiny_run_overrides

REPO = Path(__file__).resolve().parents[1]


def read_steps(run):
    path = run / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def test_sigterm_saves_a_checkpoint_then_exits(tmp_path, synthetic_data):
    run = tmp_path / "run"
    overrides = tiny_run_overrides(run, synthetic_data, max_steps=100_000) + ["train.checkpoint_every=50000"]
    process = subprocess.Popen([sys.executable, "main.py", *overrides], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not read_steps(run) and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert read_steps(run), "training did not start"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "interrupted by SIGTERM" in err
    checkpoint = latest_checkpoint(run)
    assert checkpoint is not None
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert checkpoint.name == f"checkpoint-{state['step']}" and state["step"] >= max(read_steps(run))
    assert (checkpoint / "model" / "model_index.json").exists()


class NaNAfter(step.FACMObjective):
    """The real objective, but the loss turns NaN from optimizer step 8 on."""

    calls = 0

    def __call__(self, model, batch, generator=None):
        loss, parts = super().__call__(model, batch, generator)
        NaNAfter.calls += 1
        if NaNAfter.calls > 8:
            loss = loss * float("nan")
        return loss, parts


def test_consecutive_non_finite_steps_stop_the_run_naming_step_and_checkpoint(tmp_path, synthetic_data, monkeypatch):
    monkeypatch.setattr(step, "FACMObjective", NaNAfter)
    NaNAfter.calls = 0
    run = tmp_path / "run"
    config = load_config(default_config_path(), tiny_run_overrides(run, synthetic_data, max_steps=40)
                         + ["train.checkpoint_every=5", "train.max_consecutive_skips=3", "train.log_every=1"])
    # steps 8, 9 and 10 are skipped; a skipped step consumes its batch but leaves the weights alone, so the
    # checkpoint written after step 9 holds the (finite) weights of step 7
    with pytest.raises(NonFiniteTraining, match=r"stopped at step 10: 3 consecutive non-finite steps.*checkpoint-10"):
        loop.train(config)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["skipped_steps"] for m in metrics][-2:] == [1, 2]
    at_5, at_10 = (load_file(run / f"checkpoint-{n}" / "model.safetensors") for n in (5, 10))
    assert all(torch.isfinite(t).all() for t in at_10.values())
    assert any(not torch.equal(at_5[k], at_10[k]) for k in at_5)


def test_half_written_checkpoints_are_ignored(tmp_path):
    (tmp_path / "checkpoint-10").mkdir()
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text("{}")
    (tmp_path / ".checkpoint-20.tmp").mkdir()  # a save that was killed before its rename
    (tmp_path / "checkpoint-30").mkdir()  # no trainer state: not complete
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-10"]
    assert latest_checkpoint(tmp_path).name == "checkpoint-10"


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("archive", [False, True], ids=["plain pickle", "torch.save archive"])
def test_a_checkpoint_carrying_code_is_refused_without_running_it(tmp_path, synthetic_data, archive):
    run = tmp_path / "run"
    overrides = tiny_run_overrides(run, synthetic_data, max_steps=4) + ["train.checkpoint_every=2"]
    loop.train(load_config(default_config_path(), overrides))
    shutil.rmtree(run / "checkpoint-4")
    marker = tmp_path / "pwned"
    with open(run / "checkpoint-2" / "optimizer.bin", "wb") as handle:
        if archive:
            torch.save({"state": Payload(marker)}, handle)
        else:
            pickle.dump({"state": Payload(marker)}, handle)
    refusal = "holds objects other than tensors; refused to load it" if archive else "not a torch.save archive"
    with pytest.raises(ValueError, match=f"checkpoint-2 is damaged \\(optimizer.bin .*{refusal}.*nothing was loaded"):
        loop.train(load_config(default_config_path(), overrides))
    assert not marker.exists()


def torchrun(args, run):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "main.py", *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_process_training_checkpoints_once_and_resumes_exactly(tmp_path, synthetic_data):
    """Also "auto" precision across processes: the main process's choice reaches both, and the resumed run keeps it."""
    run = tmp_path / "run"
    args = tiny_run_overrides(run, synthetic_data, max_steps=8) + ["train.checkpoint_every=4", "train.log_every=2",
                                                                   "train.mixed_precision=auto"]
    torchrun(args, run)
    precision = json.loads((run / "checkpoint-8" / "trainer_state.json").read_text())["mixed_precision"]
    assert precision in ("no", "bf16")
    assert read_steps(run) == [2, 4, 6, 8]  # logged once, by the main process
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-4", "checkpoint-8"]
    assert {p.name for p in (run / "checkpoint-8").glob("random_states_*.pkl")} == {
        "random_states_0.pkl", "random_states_1.pkl"}
    final = load_file(run / "checkpoint-8" / "model.safetensors")

    # stop after step 4 (drop the later checkpoint) and rerun the same command: same weights at step 8
    shutil.rmtree(run / "checkpoint-8")
    (run / "metrics.jsonl").unlink()
    torchrun(args, run)
    assert read_steps(run) == [6, 8]
    resumed = load_file(run / "checkpoint-8" / "model.safetensors")
    assert all(torch.equal(final[k], resumed[k]) for k in final)
    assert json.loads((run / "checkpoint-8" / "trainer_state.json").read_text())["mixed_precision"] == precision


def test_sigkill_after_a_checkpoint_then_rerun_matches_an_uninterrupted_run(tmp_path, synthetic_data):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    loop.train(load_config(default_config_path(), tiny_run_overrides(reference, synthetic_data, max_steps=60)))
    args = tiny_run_overrides(killed, synthetic_data, max_steps=60) + ["train.checkpoint_every=10"]
    process = subprocess.Popen([sys.executable, "main.py", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not (killed / "checkpoint-10").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.kill()  # SIGKILL: no handler runs
    process.wait()
    assert latest_checkpoint(killed) is not None
    subprocess.run([sys.executable, "main.py", *args], cwd=REPO, check=True, capture_output=True, timeout=300)
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(reference / "checkpoint-60" / name)
        b = load_file(killed / "checkpoint-60" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.parametrize("bad,finite", [(float("inf"), True), (float("nan"), False)])
def test_an_overflowing_jvp_tangent_is_clipped_or_skipped(monkeypatch, bad, finite):
    """bf16 can overflow in the JVP. An infinite tangent is absorbed by FACM's clip of the residual (the target
    stays finite); a NaN one (inf - inf, 0 * inf) makes the loss non-finite, and the loop skips that step."""
    from eidos.config import ObjectiveConfig
    from eidos.objectives import facm
    from tests.conftest import make_batch, make_tiny_model

    real = facm.velocity_and_time_derivative

    def overflowing(*args, **kwargs):
        G, dG = real(*args, **kwargs)
        return G, torch.full_like(dG, bad)

    monkeypatch.setattr(facm, "velocity_and_time_derivative", overflowing)
    model = make_tiny_model()
    objective = facm.FACMObjective(ObjectiveConfig(), patch_size=4, mask_ratio=0.5, teacher=model)
    loss, parts = objective(model, make_batch(), torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(loss)) == finite and bool(torch.isfinite(parts["cm"])) == finite


def test_a_failing_sample_grid_is_a_warning_and_the_run_goes_on(tmp_path, synthetic_data, monkeypatch, caplog):
    """Grids are drawn after the step's checkpoint is safe, and a grid that fails never ends the run."""

    def broken(*args, **kwargs):
        raise RuntimeError("preview exploded")

    monkeypatch.setattr(report, "render_previews", broken)
    run = tmp_path / "run"
    with caplog.at_level("WARNING"):
        loop.train(load_config(default_config_path(), tiny_run_overrides(run, synthetic_data, max_steps=30)))
    assert (run / "checkpoint-30" / "trainer_state.json").exists() and (run / "model" / "model_index.json").exists()
    assert "step 30: sample grid failed, training goes on: RuntimeError: preview exploded" in caplog.text
