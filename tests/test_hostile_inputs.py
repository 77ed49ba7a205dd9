"""Hostile input, as a table: what a user (or their data) can throw at the CLI -> the exit status, and the one
line that says what, where and the fix (status 2, no traceback), or the counted skip (status 0).

Each probe runs `eidos ...` in-process on a fresh folder and fails before any heavy work, or on tiny data. The
slow cases (damaged checkpoints, full disks) live in test_damaged_checkpoints.py and test_full_disk.py.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from eidos.cli.main import build_parser, main, parse
from eidos.data.prepare.shard_encoder import ends_with_end_of_archive
from eidos.data.prepare.shard_writer import ShardSample, write_shards
from eidos.data.streamed_shards import ShardStream
from tests.conftest import mounted_tmpfs


def png(seed: int = 0, size=(24, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


BOMB = io.BytesIO()
Image.new("1", (20_000, 20_000)).save(BOMB, "PNG")  # 48 KB on disk, 400 million pixels declared
BOMB = BOMB.getvalue()


@dataclass
class Workspace:
    root: Path
    exported: Path  # a saved tiny EidosPipeline
    stack: ExitStack
    monkeypatch: pytest.MonkeyPatch

    def file(self, name: str, content: bytes | str = b"") -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def run_folder(self) -> Path:
        """What a user would lose: a run's config, metrics, sample grids and exported model."""
        run = self.root / "run"
        shutil.copytree(self.exported, run / "model")
        self.file("run/config.yaml", "train:\n  max_steps: 4\n")
        self.file("run/metrics.jsonl", '{"step": 2}\n')
        self.file("run/samples/step-0000002.png", png())
        return run


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- setups: each returns the command line -----------------------------------------------------------------


def malformed_yaml(ws):
    return ["train", "--config", str(ws.file("bad.yaml", "model:\n  preset: [tiny\ntrain: {"))]


def config_folder(ws):
    (ws.root / "configs").mkdir()
    return ["train", "--config", str(ws.root / "configs")]


def stage_out_of_range(ws):
    return ["train", "train.stages.5.mask_ratio=0.3"]


def output_dir_is_a_file(ws):
    return ["train", "--output-dir", str(ws.file("taken.txt", "mine"))]


def output_dir_under_a_file(ws):
    return ["train", "--output-dir", str(ws.file("taken.txt", "mine") / "run")]


def read_only_output_dir(ws):
    folder = ws.root / "readonly"
    if os.geteuid() == 0:  # root writes through permission bits: a read-only mount is the real thing
        ws.stack.enter_context(mounted_tmpfs(folder, "1M", "ro"))
    else:
        folder.mkdir()
        folder.chmod(0o555)
        ws.stack.callback(folder.chmod, 0o755)
    return ["train", "--output-dir", str(folder / "run")]


def missing_codec_folder(ws):
    ws.monkeypatch.chdir(ws.root)
    return ["train", f"--output-dir={ws.root / 'run'}", "encoders.codec=./myvae"]


def corrupt_cache(ws):
    bad = ws.file("cache/shard-00000.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 300)  # HDF5 signature, then nothing
    return ["train", "--output-dir", str(ws.root / "run"), "data.source=cache", f"data.train_files={bad}",
            "data.resolution=16", "model.preset=tiny"]


def options_after_overrides(ws):
    return ["train", "data.source=nowhere", "--max-steps", "100", "train.seed=1", "--output-dir", str(ws.root / "r")]


def eval_negative_prompts(ws):
    return ["eval", "--checkpoint", str(ws.exported), "--max-prompts", "-5"]


def eval_zero_batch(ws):
    return ["eval", "--checkpoint", str(ws.exported), "--batch-size", "0"]


def eval_on_missing_cuda(ws):
    return ["eval", "--checkpoint", str(ws.exported), "--device", "cuda"]


def sample_on_missing_cuda(ws):
    return ["sample", "--checkpoint", str(ws.exported), "--prompt", "a", "--out", str(ws.root / "a.png"),
            "--device", "cuda"]


def sample_with_nan_guidance(ws):
    return ["sample", "--checkpoint", str(ws.exported), "--prompt", "a", "--out", str(ws.root / "a.png"),
            "--sampler", "flow", "--steps", "2", "--guidance-scale", "nan"]


def non_finite_learning_rate(ws):
    return ["train", f"--output-dir={ws.root / 'run'}", "train.stages.0.learning_rate=.inf"]


def train_into_a_foreign_folder(ws):
    ws.file("proj/model/net.py", "mine")
    ws.file("proj/config.yaml", "mine\n")
    return ["train", f"--output-dir={ws.root / 'proj'}", "--max-steps=2"]


def resume_with_another_model_size(ws):
    import yaml

    from eidos.config import default_config_path, load_config

    run = ws.root / "run"
    saved = load_config(default_config_path(), [f"train.output_dir={run}"]).to_dict()
    ws.file("run/config.yaml", yaml.safe_dump(saved))
    return ["train", f"--output-dir={run}", "model.width=240"]


def foreign_folder_intact(ws, caplog):
    assert files_under(ws.root / "proj") == {"config.yaml": b"mine\n", "model/net.py": b"mine"}


def sample_on_a_typo_device(ws):
    return ["sample", "--checkpoint", str(ws.exported), "--prompt", "a", "--out", str(ws.root / "a.png"),
            "--device", "gpu0"]


def export_into_a_users_folder(ws):
    ws.file("victim/thesis.txt", "four years of work")
    return ["export", "--checkpoint", str(ws.exported), "--out", str(ws.root / "victim")]


def export_into_its_run(ws):
    run = ws.run_folder()
    return ["export", "--checkpoint", str(run), "--out", str(run)]


def export_into_the_parent(ws):
    run = ws.run_folder()
    ws.monkeypatch.chdir(run / "model")
    return ["export", "--checkpoint", ".", "--out", ".."]


def export_onto_an_export(ws):
    shutil.copytree(ws.exported, ws.root / "previous")
    return ["export", "--checkpoint", str(ws.exported), "--out", str(ws.root / "previous")]


def export_onto_a_file(ws):
    return ["export", "--checkpoint", str(ws.exported), "--out", str(ws.file("model.bin", "weights"))]


def image_folder(ws, files: dict[str, bytes | str]) -> Path:
    for name, content in files.items():
        ws.file(f"images/{name}", content)
    return ws.root / "images"


def shards_of(ws, files) -> list[str]:
    return ["data", "shards", "--images", str(image_folder(ws, files)), "--out", str(ws.root / "shards")]


def shards_with_a_bomb(ws):
    return shards_of(ws, {"bomb.png": BOMB, "bomb.txt": "boom", "ok.png": png(), "ok.txt": "fine"})


def shards_with_bad_utf8(ws):
    return shards_of(ws, {"a.png": png(0), "a.txt": b"caf\xe9 au lait", "b.png": png(1), "b.txt": "fine"})


def shards_with_dots_and_folders(ws):
    return shards_of(ws, {"my.photo.png": png(0), "my.photo.txt": "dotted", "sub/x.png": png(1), "sub/x.txt": "sub",
                          "sub_x.png": png(2), "sub_x.txt": "underscore"})


def shards_with_a_latin1_captions_file(ws):
    images = image_folder(ws, {"a.png": png()})
    captions = ws.file("captions.csv", "file,caption\na.png,caf\xe9\n".encode("latin-1"))
    return ["data", "shards", "--images", str(images), "--captions", str(captions), "--out", str(ws.root / "s")]


def encode_of(ws, samples: list[ShardSample], *extra) -> list[str]:
    write_shards(samples, ws.root / "shards")
    return ["data", "encode", "--shards", str(ws.root / "shards" / "*.tar"), "--out", str(ws.root / "cache"),
            "--resolution", "16", *extra]


def encode_a_bomb(ws):
    return encode_of(ws, [ShardSample("000000000", BOMB, "png", "boom"), ShardSample("000000001", png(), "png", "ok")])


def encode_with_a_missing_codec_folder(ws):
    return encode_of(ws, [ShardSample("000000000", png(), "png", "ok")], "--codec", "./myvae")


def encode_two_shards_of_one_name(ws):
    for folder in ("a", "b"):
        write_shards([ShardSample("000000000", png(), "png", "ok")], ws.root / folder)
    return ["data", "encode", "--shards", str(ws.root / "*" / "shard-00000.tar"), "--out", str(ws.root / "cache")]


# --- checks beyond the message -------------------------------------------------------------------------------


def victim_intact(ws, caplog):
    assert files_under(ws.root / "victim") == {"thesis.txt": b"four years of work"}


def run_intact(ws, caplog):
    run = ws.root / "run"
    assert set(files_under(run)) >= {"config.yaml", "metrics.jsonl", "samples/step-0000002.png",
                                     "model/model_index.json"}
    assert sorted(p.name for p in ws.root.iterdir()) == ["run"]  # and no temp folder beside it


def previous_export_intact(ws, caplog):
    assert files_under(ws.root / "previous") == files_under(ws.exported)


def read_back(ws) -> list[dict]:
    shards = [str(path) for path in sorted((ws.root / "shards").glob("*.tar"))]
    return list(wds.WebDataset(shards, shardshuffle=False).decode())


def shards_terminated_and_utf8_named(ws, caplog):
    [shard] = (ws.root / "shards").glob("*.tar")
    assert ends_with_end_of_archive(shard)
    assert [s["txt"] for s in read_back(ws)] == ["fine"]
    assert any(str(ws.root / "images" / "a.txt") in r.getMessage() for r in caplog.records)


def every_file_kept(ws, caplog):
    samples = read_back(ws)
    assert sorted(s["json"]["file"] for s in samples) == ["my.photo.png", "sub/x.png", "sub_x.png"]
    assert sorted(s["txt"] for s in samples) == ["dotted", "sub", "underscore"]
    assert all("." not in s["__key__"] for s in samples)


def bomb_skipped_in_encode(ws, caplog):
    from eidos.data.cache import read_cache

    assert read_cache(ws.root / "cache" / "shard-00000.h5").captions == ["ok"]


@dataclass
class Probe:
    setup: Callable[[Workspace], list[str]]
    status: int
    message: str  # in stderr (status != 0) or stdout (status 0)
    check: Callable | None = None


PROBES = {
    "malformed YAML": Probe(malformed_yaml, 2, "bad.yaml is not valid YAML: expected ',' or ']', but got ':' at line "
                                               "3, column 6; fix the file"),
    "--config names a folder": Probe(config_folder, 2, "configs is a folder; name a YAML file"),
    "stage index out of range": Probe(stage_out_of_range, 2, "override 'train.stages.5.mask_ratio=0.3': train.stages "
                                                             "has"),
    "output dir is a file": Probe(output_dir_is_a_file, 2, "taken.txt is a file, not a folder; choose another"),
    "output dir under a file": Probe(output_dir_under_a_file, 2, "taken.txt, which is a file, not a folder"),
    "read-only output dir": Probe(read_only_output_dir, 2, "readonly/run cannot be written"),
    "missing local codec folder": Probe(missing_codec_folder, 2,
                                        "encoders.codec='./myvae' names a local folder that does not exist"),
    "corrupt cache file": Probe(corrupt_cache, 2, "shard-00000.h5 is damaged or not an HDF5 cache"),
    "options after overrides": Probe(options_after_overrides, 2, "config key 'data.source' = 'nowhere' is invalid"),
    "eval --max-prompts -5": Probe(eval_negative_prompts, 2, "--max-prompts must be >= 1, got -5"),
    "eval --batch-size 0": Probe(eval_zero_batch, 2, "--batch-size must be >= 1, got 0"),
    "eval --device cuda without CUDA": Probe(eval_on_missing_cuda, 2, "--device cuda: no CUDA device is available"),
    "sample --device cuda without CUDA": Probe(sample_on_missing_cuda, 2, "--device cuda: no CUDA device"),
    "sample --guidance-scale nan": Probe(sample_with_nan_guidance, 2, "`guidance_scale` must be >= 1"),
    "learning rate inf": Probe(non_finite_learning_rate, 2, "learning_rate' = inf is invalid: expected a finite"),
    "train into a foreign folder": Probe(train_into_a_foreign_folder, 2, "proj/config.yaml is not an eidos run config",
                                         foreign_folder_intact),
    "resume with another model size": Probe(resume_with_another_model_size, 2,
                                            "holds another run (its config.yaml differs: model.width: None -> 240)"),
    "sample --device typo": Probe(sample_on_a_typo_device, 2, "--device 'gpu0' is not a device name"),
    "export into a user's folder": Probe(export_into_a_users_folder, 2, "victim is not empty and is not an eidos "
                                                                        "export", victim_intact),
    "export into its own run": Probe(export_into_its_run, 2, "holds the model being exported", run_intact),
    "export --out ..": Probe(export_into_the_parent, 2, "--out .. holds the model being exported", run_intact),
    "export onto an export": Probe(export_onto_an_export, 2, "already holds an eidos export; pass --overwrite",
                                   previous_export_intact),
    "export onto a file": Probe(export_onto_a_file, 2, "model.bin is a file, not a folder"),
    "decompression bomb (shards)": Probe(shards_with_a_bomb, 0, "skipped 1: undecodable image"),
    "caption not UTF-8": Probe(shards_with_bad_utf8, 0, "skipped 1: caption file is not UTF-8 text",
                               shards_terminated_and_utf8_named),
    "dots and folders in file names": Probe(shards_with_dots_and_folders, 0, "wrote 3 samples", every_file_kept),
    "captions file not UTF-8": Probe(shards_with_a_latin1_captions_file, 2, "captions.csv is not UTF-8 text "
                                                                            "(line 2)"),
    "decompression bomb (encode)": Probe(encode_a_bomb, 0, "skipped 1: undecodable image", bomb_skipped_in_encode),
    "encode --codec ./missing": Probe(encode_with_a_missing_codec_folder, 2, "--codec='./myvae' names a local folder"),
    "two shards of one name": Probe(encode_two_shards_of_one_name, 2, "matches two shards named shard-00000"),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from tests.test_pipeline import make_pipeline

    folder = tmp_path_factory.mktemp("exported") / "model"
    make_pipeline().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name", list(PROBES))
def test_hostile_input(name, tmp_path, exported, monkeypatch, capsys, caplog):
    probe = PROBES[name]
    if "cuda" in name and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with ExitStack() as stack:
        ws = Workspace(tmp_path / "ws", exported, stack, monkeypatch)
        ws.root.mkdir()
        argv = probe.setup(ws)
        status = main(argv)
        out, err = capsys.readouterr()
        assert status == probe.status, err[-3000:]
        assert probe.message in (err if probe.status else out), (out + err)[-3000:]
        if probe.status == 2:  # one line, the last, after any progress bars of what loaded before the failure
            last = err.strip().splitlines()[-1]
            assert "Traceback" not in err and last.startswith(f"eidos {argv[0]}: error: "), err
            assert probe.message in last
        if probe.check is not None:
            probe.check(ws, caplog)


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {")
    with pytest.raises(ValueError, match="is not valid YAML"):
        main(["train", "--config", str(bad), "--debug"])
    monkeypatch.setenv("EIDOS_DEBUG", "1")
    with pytest.raises(ValueError, match="is not valid YAML"):
        main(["train", "--config", str(bad)])


@pytest.mark.parametrize("argv", [
    ["train", "data.source=cache", "--max-steps", "100", "train.seed=1"],
    ["train", "--max-steps", "100", "data.source=cache", "train.seed=1"],
    ["train", "data.source=cache", "train.seed=1", "--max-steps", "100"],
])
def test_options_and_overrides_in_any_order(argv):
    args = parse(build_parser(), argv)
    assert args.max_steps == 100 and args.overrides == ["data.source=cache", "train.seed=1"]


def test_eval_takes_options_after_overrides_too():
    args = parse(build_parser(), ["eval", "--checkpoint", "m", "sampling.flow_steps=2", "--seed", "3", "a.b=1"])
    assert args.seed == 3 and args.overrides == ["sampling.flow_steps=2", "a.b=1"] and args.checkpoint == "m"


def test_unknown_options_are_still_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "a.b=1", "--max-stpes", "3"])
    assert exit_.value.code == 2 and "unrecognized arguments: --max-stpes" in capsys.readouterr().err


def test_a_decompression_bomb_in_a_training_shard_is_skipped_and_counted(tmp_path):
    with wds.TarWriter(str(tmp_path / "shard.tar")) as writer:
        writer.write({"__key__": "000000000", "png": BOMB, "txt": "boom"})
        writer.write({"__key__": "000000001", "png": png(), "txt": "fine"})
    skipped = Counter()
    stream = ShardStream([str(tmp_path / "shard.tar")], 16, seed=0, rank=0, shuffle_buffer=1, skipped=skipped)
    keys, captions, images = stream.take(3)
    assert captions == ["fine"] * 3 and images.shape == (3, 16, 16, 3)
    assert skipped["undecodable image"] >= 2


def test_a_corrupt_cache_file_is_named(tmp_path):
    from eidos.data.cache import read_cache

    with h5py.File(tmp_path / "cut.h5", "w") as f:
        f.create_dataset("latent_mean", data=np.zeros((64, 3, 16, 16), np.float16))
    data = (tmp_path / "cut.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="cut.h5 is damaged or not an HDF5 cache"):
        read_cache(tmp_path / "cut.h5")
    (tmp_path / "notes.h5").write_text(json.dumps({"not": "hdf5"}))
    with pytest.raises(ValueError, match="notes.h5 is damaged or not an HDF5 cache"):
        read_cache(tmp_path / "notes.h5")
