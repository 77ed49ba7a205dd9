"""A real full disk (a small tmpfs) during a checkpoint save or an export: the writers' own errors (safetensors'
SafetensorError, torch.save's RuntimeError) end the run with a message and exit status 1, the temp folder is
removed, and the previous checkpoint or export stays intact. Where no tmpfs can be mounted, a file-size limit
(RLIMIT_FSIZE) makes the same writers fail for real."""

import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import SafetensorError
from safetensors.torch import load_file

from eidos.cli.main import main
from eidos.sampling.pipeline import EidosPipeline, save_pipeline
from eidos.training.checkpoint import latest_checkpoint, list_checkpoints
from eidos.training.checkpoint_check import damage
from tests.conftest import fill_to, mounted_tmpfs, tiny_run_overrides, tmpfs_available

REPO = Path(__file__).resolve().parents[1]


def test_a_full_disk_during_a_checkpoint_save_keeps_the_previous_one_and_exits_1(tmp_path, synthetic_data,
                                                                                  capsys):
    with mounted_tmpfs(tmp_path / "disk", "400M") as disk:
        run = disk / "run"
        # the live teacher: no teacher file to write when the consistency stage begins, only checkpoints
        args = tiny_run_overrides(run, synthetic_data, max_steps=2) + ["train.checkpoint_every=2",
                                                                       "train.tracker=none",
                                                                       "objective.consistency_teacher=flow_branch"]
        assert main(["train", *args]) == 0
        model_bytes = (run / "checkpoint-2" / "model.safetensors").stat().st_size
        # Each save starts with accelerate's model.safetensors, then torch.save's optimizer.bin: leave no room
        # for the first, then room for the first only.
        for free, writer in ((0, "SafetensorError"), (model_bytes + 256 * 1024, "RuntimeError")):
            filler = fill_to(disk, free)
            capsys.readouterr()
            assert main(["train", *args, "train.max_steps=4"]) == 1
            err = capsys.readouterr().err
            assert f"could not write the checkpoint of step 4 to {run}: {writer}" in err, err[-2000:]
            assert f"latest: {run / 'checkpoint-2'}" in err and "free space and rerun to resume" in err
            assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2"] and not damage(run / "checkpoint-2")
            assert not list(run.glob(".checkpoint-*")), "the temp folder of the failed save is left behind"
            filler.unlink()
        assert main(["train", *args, "train.max_steps=4"]) == 0  # space freed: the same command resumes
        assert latest_checkpoint(run).name == "checkpoint-4"
        assert set(load_file(run / "checkpoint-4" / "ema.safetensors"))


def limited_file_size(max_bytes: int):
    def apply() -> None:  # in the child: writes past max_bytes fail with EFBIG instead of killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return apply


@pytest.mark.skipif(tmpfs_available(), reason="the tmpfs test above covers this with a real full disk")
def test_a_file_size_limit_during_a_checkpoint_save_keeps_the_previous_one_and_exits_1(tmp_path, synthetic_data):
    run = tmp_path / "run"
    args = tiny_run_overrides(run, synthetic_data, max_steps=2) + ["train.checkpoint_every=2", "train.tracker=none"]
    assert main(["train", *args]) == 0
    model_bytes = (run / "checkpoint-2" / "model.safetensors").stat().st_size
    for limit, writer in ((64 * 1024, "SafetensorError"), (model_bytes + 64 * 1024, "RuntimeError")):
        result = subprocess.run([sys.executable, "main.py", *args, "train.max_steps=4"], cwd=REPO, text=True,
                                capture_output=True, timeout=300, preexec_fn=limited_file_size(limit))
        assert result.returncode == 1, result.stderr[-2000:]
        assert f"could not write the checkpoint of step 4 to {run}: {writer}" in result.stderr, result.stderr[-2000:]
        assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2"] and not damage(run / "checkpoint-2")
        assert not list(run.glob(".checkpoint-*"))


def test_a_full_disk_during_an_export_leaves_the_previous_export(tmp_path):
    from tests.test_pipeline import make_pipeline

    pipeline = make_pipeline()
    with mounted_tmpfs(tmp_path / "disk", "64M") as disk:
        save_pipeline(pipeline, disk / "model")
        used = sum(p.stat().st_size for p in (disk / "model").rglob("*") if p.is_file())
        filler = fill_to(disk, used // 2)  # room for half of a second export
        with pytest.raises(SafetensorError, match="No space left on device"):
            save_pipeline(pipeline, disk / "model")
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "model"]  # no temp folder left
        filler.unlink()
        EidosPipeline.from_pretrained(disk / "model")  # the previous export, whole
        shutil.rmtree(disk / "model")
