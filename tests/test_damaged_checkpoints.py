"""A checkpoint damaged after it was written (truncated, emptied, cut) never blocks a resume: the run resumes
from the newest intact checkpoint with a warning naming the damage, keeps the damaged folder (renamed aside when
the run reaches its step again) and ends exactly where an undisturbed run ends."""

import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file

from eidos.config import default_config_path, load_config
from eidos.training import loop
from eidos.training.checkpoint import latest_checkpoint
from eidos.training.checkpoint_check import damage
from tests.conftest import tiny_run_overrides


def truncate(path, keep):
    path.write_bytes(path.read_bytes()[:keep(path.stat().st_size)])


DAMAGE = {  # file -> (how it is damaged, what the warning says)
    "model.safetensors": (lambda size: size // 2, "model.safetensors is truncated or corrupt"),
    "optimizer.bin": (lambda size: 0, "optimizer.bin is empty"),
    "ema.safetensors": (lambda size: size - 100, "ema.safetensors is truncated or corrupt"),
    "trainer_state.json": (lambda size: 10, "trainer_state.json is cut or corrupt"),
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, synthetic_data):
    """A 4-step run with checkpoints at 2 and 4, and a pristine copy of checkpoint-4."""
    run = tmp_path_factory.mktemp("damaged") / "run"
    overrides = tiny_run_overrides(run, synthetic_data, max_steps=4) + ["train.checkpoint_every=2",
                                                                       "train.tracker=none"]
    loop.train(load_config(default_config_path(), overrides))
    shutil.copytree(run / "checkpoint-4", run.parent / "pristine-4")
    return run, overrides


@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_damaged_newest_checkpoint_resumes_from_the_previous_one(finished_run, name, caplog):
    run, overrides = finished_run
    keep, message = DAMAGE[name]
    truncate(run / "checkpoint-4" / name, keep)
    damaged_bytes = (run / "checkpoint-4" / name).read_bytes()
    try:
        assert latest_checkpoint(run).name == "checkpoint-2"
        with caplog.at_level(logging.INFO):
            loop.train(load_config(default_config_path(), overrides))
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(f"checkpoint-4 is damaged ({message}" in w and "left in place" in w for w in warnings), warnings
        assert any(f"resumed from {run / 'checkpoint-2'} at step 2" in r.getMessage() for r in caplog.records)
        # the damaged folder is kept, renamed aside when step 4 is saved again, its bytes untouched
        assert (run / "checkpoint-4.damaged" / name).read_bytes() == damaged_bytes
        assert any("renamed the damaged" in w for w in [r.getMessage() for r in caplog.records])
        assert not damage(run / "checkpoint-4") and latest_checkpoint(run).name == "checkpoint-4"
        for weights in ("model.safetensors", "ema.safetensors"):  # the resumed run ends where the first one did
            before, after = (load_file(folder / weights) for folder in (run.parent / "pristine-4",
                                                                        run / "checkpoint-4"))
            assert all(torch.equal(before[k], after[k]) for k in before), weights
    finally:
        for folder in ("checkpoint-4", "checkpoint-4.damaged"):
            shutil.rmtree(run / folder, ignore_errors=True)
        shutil.copytree(run.parent / "pristine-4", run / "checkpoint-4")


def test_when_every_checkpoint_is_damaged_nothing_is_loaded_and_the_message_names_each(finished_run):
    run, overrides = finished_run
    truncate(run / "checkpoint-4" / "model.safetensors", lambda size: 0)
    truncate(run / "checkpoint-2" / "trainer_state.json", lambda size: 5)
    pattern = (r"checkpoint-4 is damaged \(model.safetensors is empty\) and no older checkpoint .* is intact; "
               r"nothing was loaded. Move the damaged checkpoint folders out of")
    with pytest.raises(ValueError, match=pattern):
        loop.train(load_config(default_config_path(), overrides))
    assert (run / "checkpoint-2").is_dir() and (run / "checkpoint-4").is_dir()  # nothing deleted


def test_an_unreadable_random_state_file_is_a_warning_that_resume_is_not_exact(tmp_path, caplog):
    from eidos.training.checkpoint import _warn_about_random_states

    (tmp_path / "random_states_0.pkl").write_bytes(b"\x80\x04not a pickle")
    with caplog.at_level("WARNING"):
        _warn_about_random_states(tmp_path, 0)
    assert "random_states_0.pkl could not be read" in caplog.text and "no longer bit-exact" in caplog.text
