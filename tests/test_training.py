"""End-to-end training on the embedded default (OpenMoji, MiniLM; tiny sizes), resume, `eidos sample` and
`eidos eval`; compiled blocks and "auto" precision on the synthetic cache."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from eidos.cli.main import main
from eidos.config import default_config_path, load_config
from eidos.training import precision
from eidos.training.checkpoint import list_checkpoints
from eidos.training.loop import train
from tests.conftest import tiny_run_overrides


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, openmoji_data):
    output = tmp_path_factory.mktemp("run")
    train(load_config(default_config_path(), tiny_run_overrides(output, openmoji_data)))
    return output


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_short_run_lowers_the_loss_and_writes_everything(run_dir):
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == list(range(5, 61, 5))
    first = (metrics[0]["loss/total"] + metrics[1]["loss/total"]) / 2
    last = (metrics[-2]["loss/total"] + metrics[-1]["loss/total"]) / 2
    assert last < 0.8 * first, (first, last)
    assert {"loss/fm", "loss/cm", "loss/mae", "lr", "grad_norm", "samples_per_sec"} <= metrics[0].keys()
    assert [p.name for p in list_checkpoints(run_dir)] == ["checkpoint-30", "checkpoint-60"]
    for folder in (run_dir / "model", run_dir / "checkpoint-60" / "model"):
        assert (folder / "transformer" / "diffusion_pytorch_model.safetensors").exists()
        assert (folder / "model_index.json").exists() and (folder / "text_encoder" / "config.json").exists()
    grids = sorted((run_dir / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["step-0000000.png", "step-0000030.png", "step-0000060.png"]  # step 0: a preview
    assert Image.open(grids[-1]).size[1] > 4 * 64  # 4 prompt rows
    assert list(run_dir.glob("eidos/events.out.tfevents*")) or list(run_dir.rglob("events.out.tfevents*"))
    assert load_config(run_dir / "config.yaml").train.max_steps == 60  # the resolved config, reloadable


def test_rerunning_resumes_from_the_latest_checkpoint_exactly(run_dir, tmp_path, openmoji_data):
    """Keep only the first checkpoint (as if the run had stopped after step 30) and rerun the same command:
    training continues from step 30 and reaches bit-identical weights, EMA and optimizer state at step 60."""
    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir / "checkpoint-30", resumed / "checkpoint-30")
    train(load_config(default_config_path(), tiny_run_overrides(resumed, openmoji_data)))
    steps = [m["step"] for m in read_metrics(resumed)]
    assert steps == list(range(35, 61, 5))  # nothing before step 30 was redone
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(run_dir / "checkpoint-60" / name), load_file(resumed / "checkpoint-60" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    opt_a = torch.load(run_dir / "checkpoint-60" / "optimizer.bin", weights_only=True)
    opt_b = torch.load(resumed / "checkpoint-60" / "optimizer.bin", weights_only=True)
    assert opt_a["state"].keys() == opt_b["state"].keys() and opt_a["state"]  # Muon's momenta and AdamW's moments
    for index, state in opt_a["state"].items():
        assert state.keys() == opt_b["state"][index].keys()
        assert all(torch.equal(torch.as_tensor(v), torch.as_tensor(opt_b["state"][index][k])) for k, v in state.items())
    state = json.loads((resumed / "checkpoint-60" / "trainer_state.json").read_text())
    assert state["step"] == 60 and state["samples_seen"] == 60 * 16


def test_sample_cli_is_deterministic_per_seed_and_prompt(run_dir, tmp_path):
    def sample(name, prompt="red apple", seed=0, steps=1, *extra):
        out = tmp_path / name
        code = main(["sample", "--checkpoint", str(run_dir), "--prompt", prompt, "--steps", str(steps),
                     "--seed", str(seed), "--out", str(out), *extra])
        assert code == 0
        return torch.from_numpy(np.asarray(Image.open(out))).float()

    a, b = sample("a.png"), sample("b.png")
    assert a.shape == (16, 16, 3) and torch.equal(a, b)
    assert not torch.equal(a, sample("seed.png", seed=1))
    assert not torch.equal(a, sample("prompt.png", prompt="blue heart"))
    two_step = sample("two.png", steps=2)
    assert not torch.equal(a, two_step)
    assert torch.equal(two_step, sample("sigmas.png", "red apple", 0, 1, "--sigmas", "1", "0.5"))  # its grid
    assert not torch.equal(two_step, sample("shifted.png", "red apple", 0, 1, "--sigmas", "1", "0.8"))
    grid = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(run_dir), "--prompt", "red apple", "--prompt", "flag Germany",
                 "--num-seeds", "3", "--out", str(grid)]) == 0
    assert Image.open(grid).size[1] > 2 * 64


def test_eval_cli_scores_the_run_against_its_own_data(run_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    args = ["eval", "--checkpoint", str(run_dir), "--consistency-steps", "1", "2", "--flow-steps", "1", "2",
            "--max-prompts", "10", "--out", str(out), "--consistency-sigmas", "1", "0.5"]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["config"] == str(run_dir / "config.yaml")  # the run's data (16 px, its cache), not the default
    rows = {row["images"]: row for row in report["rows"]}
    assert list(rows) == ["real held-out", "consistency 1 step", "consistency 2 steps", "consistency at s = 1, 0.5",
                          "flow 1 step, CFG 1.75", "flow 2 steps, CFG 1.75", "chance"]
    # each sampler row records its cost: network evaluations per image, two per flow step with CFG
    assert [(rows[name].get("sampler"), rows[name].get("steps"), rows[name].get("nfe")) for name in rows] == [
        (None, None, None), ("consistency", 1, 1), ("consistency", 2, 2), ("consistency", 2, 2), ("flow", 1, 2),
        ("flow", 2, 4), (None, None, None)]
    assert "| flow 2 steps, CFG 1.75 | 4 |" in capsys.readouterr().out

    # the default 2-step grid given as sigmas: the same images, the same scores
    def scores(row):
        return {key: value for key, value in row.items() if key not in ("images", "images/s")}
    assert scores(rows["consistency at s = 1, 0.5"]) == scores(rows["consistency 2 steps"])
    assert scores(rows["flow 1 step, CFG 1.75"]) != scores(rows["flow 2 steps, CFG 1.75"])
    # each flow count is a row of its own: the 2-step row is what --flow-steps 2 alone scores
    assert main([*args[:3], "--consistency-steps", "--flow-steps", "2", "--max-prompts", "10", "--out", str(out)]) == 0
    alone = json.loads(out.read_text())["rows"][1:-1]
    assert [scores(row) for row in alone] == [scores(rows["flow 2 steps, CFG 1.75"])]
    unguided = [*args[:3], "--consistency-steps", "--flow-steps", "2", "--guidance-scale", "1", "--max-prompts", "10"]
    assert main([*unguided, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][1]["nfe"] == 2  # no CFG: one forward per step
    assert rows["chance"]["top-1"] == pytest.approx(0.1) and rows["chance"]["top-5"] == pytest.approx(0.5)
    for name in list(rows)[:-1]:
        assert rows[name]["frechet"] >= 0 and 0 <= rows[name]["top-1"] <= rows[name]["top-5"] <= 1
    # 60 steps of a 100k-parameter model are far from the data: farther than the real held-out images are
    assert rows["consistency 1 step"]["frechet"] > rows["real held-out"]["frechet"]
    assert "| real held-out |" in capsys.readouterr().out
    assert main(args[:3] + ["--consistency-steps", "0"]) == 2  # refused before loading anything
    assert main(args[:3] + ["--images-per-prompt", "0"]) == 2
    assert main(args[:3] + ["--flow-steps", "0", "2"]) == 2  # 0 (no flow row) only alone
    assert main(args[:3] + ["--consistency-sigmas", "0.5", "0.7"]) == 2
    assert "strictly decreasing" in capsys.readouterr().err

    # two images per prompt = the rounds of seeds 0 and 10 (10 prompts), scored apart and averaged
    def one_step(*extra):
        main([*args[:3], "--consistency-steps", "1", "--flow-steps", "0", "--max-prompts", "10", "--out", str(out),
              *extra])
        return json.loads(out.read_text())["rows"][1]
    rounds, two = [one_step("--seed", seed) for seed in ("0", "10")], one_step("--images-per-prompt", "2")
    assert rounds[0] == pytest.approx({**rows["consistency 1 step"], "images/s": rounds[0]["images/s"]})
    assert two["frechet"] == pytest.approx((rounds[0]["frechet"] + rounds[1]["frechet"]) / 2)
    assert two["top-5"] == pytest.approx((rounds[0]["top-5"] + rounds[1]["top-5"]) / 2)
    assert two["frechet std"] == pytest.approx(abs(rounds[0]["frechet"] - rounds[1]["frechet"]) / 2 ** 0.5)
    assert rounds[0]["frechet"] != rounds[1]["frechet"]  # other seeds, other images
    shutil.copytree(run_dir / "model", tmp_path / "export")  # an export outside its run: which data is unknown
    assert main(["eval", "--checkpoint", str(tmp_path / "export")]) == 2
    assert "name the config of the data to evaluate on with --config" in capsys.readouterr().err


def test_compiled_blocks_train_like_eager_ones(tmp_path, synthetic_data):
    losses = {}
    for compile_ in ("false", "true"):
        overrides = tiny_run_overrides(tmp_path / compile_, synthetic_data, max_steps=4) + [
            f"train.compile={compile_}", "train.log_every=2", "train.checkpoint_every=4", "train.sample_every=4"]
        train(load_config(default_config_path(), overrides))
        lines = (tmp_path / compile_ / "metrics.jsonl").read_text().splitlines()
        losses[compile_] = [json.loads(line)["loss/total"] for line in lines]
    assert len(losses["true"]) == 2 and losses["true"] == pytest.approx(losses["false"], rel=1e-4)
    # the exported EMA model is a plain (uncompiled) module that loads anywhere
    exported = load_file(tmp_path / "true" / "model" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert not any("_orig_mod" in name for name in exported)


def test_auto_precision_trains_in_the_faster_one_and_keeps_it_on_resume(tmp_path, synthetic_data, monkeypatch):
    """"auto" trains in whichever precision the timing says is faster, records it, and a resumed run keeps the
    recorded one even when the timing now says otherwise: it ends bit-identical to the uninterrupted run."""
    timing = {}
    monkeypatch.setattr(precision, "bf16_matmul_speedup", lambda: timing["speedup"])

    def run(folder, speedup):
        timing["speedup"] = speedup
        overrides = tiny_run_overrides(folder, synthetic_data, max_steps=8) + [
            "train.mixed_precision=auto", "train.checkpoint_every=4", "train.sample_every=8"]
        train(load_config(default_config_path(), overrides))
        state = json.loads((folder / "checkpoint-8" / "trainer_state.json").read_text())
        return state["mixed_precision"], load_file(folder / "checkpoint-8" / "model.safetensors")

    chosen, float32_weights = run(tmp_path / "float32", 0.5)
    assert chosen == "no"
    chosen, bf16_weights = run(tmp_path / "bf16", 2.0)
    assert chosen == "bf16"
    assert not all(torch.equal(float32_weights[k], bf16_weights[k]) for k in float32_weights)  # it took effect

    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "float32" / "checkpoint-4", resumed / "checkpoint-4")
    chosen, resumed_weights = run(resumed, 2.0)  # bf16 would now win a fresh timing
    assert chosen == "no"
    assert all(torch.equal(float32_weights[k], resumed_weights[k]) for k in float32_weights)
