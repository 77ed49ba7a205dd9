"""The training recipe: FACM's flow phase, the flow-branch teacher, per-branch times, EMA restart, warm-up once."""

import json
import math
from pathlib import Path

import pytest
import torch

from eidos.batch import Batch, TextEmbeddings
from eidos.config import ObjectiveConfig, TimeDistribution, load_config
from eidos.model.maskdit import MaskDiTOutput
from eidos.objectives import FACMObjective
from eidos.objectives.facm import teacher_velocity
from eidos.objectives.time_sampling import sample_times
from eidos.sampling import sample_flow_euler
from eidos.training.ema import EMA
from eidos.training.schedule import ema_start, learning_rate
from tests.conftest import GaussianVelocity, make_batch, make_tiny_model, randomize_

MU, SIGMA0 = 0.7, 0.4


class NoiseOverTime(torch.nn.Module):
    """For data x0 = 0 the path is x_s = s eps and u = eps - x0 = x_s / s: this model returns exactly that for
    either branch (|t| = s), and records every call's time condition."""

    def __init__(self):
        super().__init__()
        self.conditions = []

    def forward(self, x, t, drop_text=None, token_mask=None, mask_ratio=0.0, generator=None, **_ignored):
        self.conditions.append(t.detach().clone())
        sample = x / t.abs().reshape(-1, 1, 1, 1)
        return MaskDiTOutput(sample=sample)


def zero_batch(size=8):
    return Batch(torch.zeros(size, 3, 16, 16), TextEmbeddings(torch.zeros(size, 16)))


def test_flow_phase_trains_both_branches_as_flow_in_one_forward():
    model = NoiseOverTime()
    objective = FACMObjective(ObjectiveConfig(consistency_batch_fraction=0.25), patch_size=4, consistency=False)
    loss, parts = objective(model, zero_batch(8), torch.Generator().manual_seed(0))
    assert len(model.conditions) == 1  # no JVP, no guidance pass
    t = model.conditions[0]
    assert (t[:2] > 0).all() and (t[2:] < 0).all()  # the consistency share takes +s, the rest -s
    # the model equals the flow target u = eps - x0 for both branches, so both losses vanish
    assert parts["fm"].item() == pytest.approx(0, abs=1e-5) and parts["cm"].item() == pytest.approx(0, abs=1e-5)
    assert loss.item() == pytest.approx(0, abs=1e-5)


def test_flow_phase_without_pretraining_gives_the_whole_batch_to_the_flow_branch():
    model = NoiseOverTime()
    config = ObjectiveConfig(consistency_batch_fraction=0.25, pretrain_consistency_branch=False)
    _, parts = FACMObjective(config, patch_size=4, consistency=False)(model, zero_batch(8))
    assert (model.conditions[0] < 0).all() and parts["cm"].item() == 0
    # On a network: without pretraining the branch embedding gets no gradient (the consistency branch stays the
    # flow branch); with it, it does.
    for pretrain in (False, True):
        network = randomize_(make_tiny_model(branch_embedding=True))
        with torch.no_grad():
            network.branch_embed.zero_()
        config = ObjectiveConfig(consistency_batch_fraction=0.25, pretrain_consistency_branch=pretrain)
        loss, _ = FACMObjective(config, patch_size=4, consistency=False)(network, make_batch(8))
        loss.backward()
        moved = network.branch_embed.grad is not None and bool(network.branch_embed.grad.any())
        assert moved == pretrain


def test_flow_phase_of_plain_flow_matching_has_no_consistency_share():
    model = NoiseOverTime()
    FACMObjective(ObjectiveConfig(consistency_weight=0.0), patch_size=4, consistency=False)(model, zero_batch(8))
    assert (model.conditions[0] < 0).all()


def test_each_branch_draws_from_its_own_time_distribution():
    generator = torch.Generator().manual_seed(0)
    flow = sample_times(100_000, TimeDistribution("logit_normal", 0.0, 1.0), generator)
    consistency = sample_times(100_000, TimeDistribution("lognormal", 0.0, 1.6), generator)
    assert flow.median().item() == pytest.approx(0.5, abs=0.01)
    assert consistency.median().item() == pytest.approx(0.5, abs=0.01)
    # logit-normal(0, 1) concentrates where content is decided; the log-normal reaches the noise end
    assert ((flow > 0.3) & (flow < 0.7)).float().mean() > 0.55
    assert (consistency > 0.9).float().mean() > 2 * (flow > 0.9).float().mean()


def test_teacher_is_the_guided_flow_branch_in_one_batched_call():
    model = make_tiny_model()
    with torch.no_grad():
        for p in model.parameters():  # a non-trivial network (AdaLN-Zero starts as the zero map)
            p.add_(0.05 * torch.randn_like(p))
    batch = make_batch(size=2)
    x, s = torch.randn_like(batch.latents), torch.tensor([0.3, 0.9])
    dropped = torch.tensor([False, False])
    cfg = ObjectiveConfig(guidance_scale=2.0, guidance_interval=(0.0, 0.75))
    u_star = teacher_velocity(model, x, s, batch.text, dropped, cfg)
    with torch.no_grad():
        cond = model(x, -s, **batch.text.model_kwargs()).sample
        uncond = model(x, -s, **batch.text.model_kwargs(), drop_text=torch.ones(2, dtype=torch.bool)).sample
    assert torch.allclose(u_star[0], uncond[0] + 2.0 * (cond[0] - uncond[0]), atol=1e-5)  # s = 0.3: guided
    assert torch.allclose(u_star[1], cond[1], atol=1e-5)  # s = 0.9 is outside the guidance interval
    assert not torch.allclose(cond, uncond, atol=1e-3)


def test_an_exact_model_has_zero_consistency_loss_with_a_flow_teacher():
    """Gaussian data, exact instantaneous and average velocities: the teacher is the true flow, the identity
    G = u - s dG/ds holds, so the FACM target equals G and the consistency loss vanishes."""
    exact = GaussianVelocity(MU, SIGMA0)
    batch = Batch(MU + SIGMA0 * torch.randn(8, 3, 16, 16), TextEmbeddings(torch.zeros(8, 16)))
    config = ObjectiveConfig(consistency_batch_fraction=1.0, text_dropout=0.0)
    objective = FACMObjective(config, patch_size=4, teacher=exact)
    _, parts = objective(exact, batch, torch.Generator().manual_seed(0))
    assert parts["cm"].item() < 1e-4
    assert parts["fm"].item() > 0.1  # the anchor still regresses single-sample velocities


def test_network_calls_per_step_by_teacher():
    exact = GaussianVelocity(MU, SIGMA0)
    batch = Batch(MU + SIGMA0 * torch.randn(4, 3, 16, 16), TextEmbeddings(torch.zeros(4, 16)))
    FACMObjective(ObjectiveConfig(consistency_teacher="flow_branch"), patch_size=4)(exact, batch)
    assert exact.calls == 4  # flow anchor + teacher (conditional and unconditional in one batch) + G + JVP pass
    FACMObjective(ObjectiveConfig(consistency_teacher="sample", guidance_scale=1.75), patch_size=4)(exact, batch)
    assert exact.calls == 4 + 5  # flow + unconditional for the anchor + unconditional for the share + G + JVP
    FACMObjective(ObjectiveConfig(consistency_teacher="sample", guidance_scale=1.0), patch_size=4)(exact, batch)
    assert exact.calls == 9 + 3


def test_learning_rate_warms_up_once_and_stages_keep_their_rates():
    config = load_config(None, ["train.max_steps=100", "train.warmup_steps=10"])
    rates = [learning_rate(config, step) for step in range(100)]
    starts = [0, 40, 80]
    assert rates[0][1] == pytest.approx(1e-4)  # (0 + 1) / 10 of 1e-3
    assert rates[40] == (1, 1e-3) and rates[80] == (2, 5e-4)  # no second warm-up at a stage boundary
    assert [index for index, _ in rates] == [i for i, n in enumerate((40, 40, 20)) for _ in range(n)]
    assert all(not math.isclose(rates[s - 1][1], 0) for s in starts[1:])


def test_ema_restarts_at_the_consistency_stage_from_the_current_weights():
    config = load_config(None, ["train.max_steps=100"])
    assert [ema_start(config, i) for i in range(3)] == [0, 0, 80]
    model = make_tiny_model()
    ema = EMA(model, decay=0.999)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, 500)
    name, param = next(iter(model.named_parameters()))
    assert not torch.allclose(ema.shadow[name], param)
    ema.restart(model)
    assert all(torch.equal(ema.shadow[n], p.float()) for n, p in model.named_parameters())
    assert ema.decay_at(0) == pytest.approx(0.1)  # the warm-up starts again from the restart


def test_old_shared_time_keys_load_as_both_branch_distributions(tmp_path):
    old = tmp_path / "config.yaml"
    old.write_text("objective: {time_sampler: lognormal, time_mean: 0.0, time_std: 1.6}\n")
    config = load_config(old)
    assert config.objective.flow_times == TimeDistribution("lognormal", 0.0, 1.6)
    assert config.objective.consistency_times == TimeDistribution("lognormal", 0.0, 1.6)


@pytest.mark.parametrize("bad", ["objective.guidance_scale=.nan", "train.stages.0.learning_rate=.inf",
                                 "objective.consistency_teacher=oracle", "objective.flow_times.std=0"])
def test_non_finite_or_unknown_recipe_values_are_refused(bad):
    with pytest.raises(ValueError, match=bad.split("=")[0].split(".")[-1].replace("stages", "")):
        load_config(None, [bad])


def test_guided_flow_previews_run_under_cpu_bf16_autocast():
    """The default model has cross-attention: guided flow sampling concatenates bool text masks, which CPU
    autocast refused ("Unexpected floating ScalarType") and which ended training at its first preview."""
    model = make_tiny_model().eval()
    batch = make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = sample_flow_euler(model, torch.randn_like(batch.latents), batch.text, num_steps=2,
                                   guidance_scale=1.75)
    assert images.shape == batch.latents.shape and torch.isfinite(images).all()


def test_a_time_limit_stops_the_run_with_a_checkpoint_and_an_export(tmp_path, synthetic_data):
    from eidos.config import default_config_path
    from eidos.training.loop import train
    from tests.conftest import tiny_run_overrides

    overrides = tiny_run_overrides(tmp_path / "run", synthetic_data, max_steps=1000)
    final = train(load_config(default_config_path(), [*overrides, "train.time_limit_minutes=0.0001"]))
    assert (final / "model_index.json").exists()
    assert [p.name for p in (tmp_path / "run").glob("checkpoint-*")] == ["checkpoint-1"]
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 1 and '"step": 1,' in metrics[0] and "train_minutes" in metrics[0]


def test_train_refuses_a_folder_it_did_not_make_and_resumes_its_own(tmp_path):
    from eidos.training.run_folder import check_run_folder

    config = load_config(None, ["train.max_steps=100"]).to_dict()
    check_run_folder(tmp_path / "new", config)  # a new folder is fine
    foreign = tmp_path / "proj"
    (foreign / "model").mkdir(parents=True)
    (foreign / "model" / "net.py").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files eidos did not write \(model\)"):
        check_run_folder(foreign, config)
    (foreign / "config.yaml").write_text("mine\n")
    with pytest.raises(ValueError, match="is not an eidos run config"):
        check_run_folder(foreign, config)
    assert (foreign / "config.yaml").read_text() == "mine\n" and (foreign / "model" / "net.py").exists()
    copied = tmp_path / "copied"
    (copied / "checkpoint-30").mkdir(parents=True)
    check_run_folder(copied, config)  # a checkpoint copied into a new folder resumes there
    (copied / "teacher-20").mkdir()  # a teacher export, and the hidden folder of an export killed mid-write
    (copied / "teacher-20" / "model_index.json").write_text("{}")
    (copied / ".model.0a1b2c3d.tmp").mkdir()
    check_run_folder(copied, config)
    (copied / "teacher-10").mkdir()  # named like a teacher, but not an export
    with pytest.raises(ValueError, match=r"holds files eidos did not write \(teacher-10\)"):
        check_run_folder(copied, config)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        check_run_folder(tmp_path / "afile", config)

    import yaml
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    check_run_folder(run, load_config(None, ["train.max_steps=300"]).to_dict())  # a longer rerun resumes
    other = load_config(None, ["train.max_steps=100", "objective.guidance_scale=2.5"]).to_dict()
    with pytest.raises(ValueError, match=r"another run .*objective.guidance_scale: 1.75 -> 2.5"):
        check_run_folder(run, other)


def test_the_frozen_teacher_is_exported_when_its_stage_begins_and_read_back_on_resume(tmp_path):
    from accelerate import Accelerator
    from safetensors.torch import save_file

    from eidos.training.teacher import TRANSFORMER_WEIGHTS, frozen_teacher, legacy_teacher_file, teacher_folder

    model = make_tiny_model()
    ema = EMA(model, decay=0.999)
    ema_model = make_tiny_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    ema.restart(model)
    exported = []

    def export(folder):  # as Run.export: the EMA weights, in the pipeline's layout
        ema.copy_to(ema_model)
        ema_model.save_pretrained(folder / "transformer")
        exported.append(folder)

    accelerator = Accelerator(cpu=True)
    teacher = frozen_teacher(accelerator, tmp_path, 80, 80, ema, ema_model, export)
    assert exported == [teacher_folder(tmp_path, 80)] and (teacher_folder(tmp_path, 80) / TRANSFORMER_WEIGHTS).is_file()
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), model.parameters(), strict=True))
    assert not any(p.requires_grad for p in teacher.parameters())
    ema.restart(make_tiny_model())  # the EMA moves on; a resumed run still gets the stage's teacher, not re-exported
    resumed = frozen_teacher(accelerator, tmp_path, 80, 95, ema, ema_model, export)
    assert len(exported) == 1
    assert all(torch.equal(a, b) for a, b in zip(resumed.parameters(), teacher.parameters(), strict=True))
    with pytest.raises(ValueError, match="teacher-40/transformer/.*, which is missing"):
        frozen_teacher(accelerator, tmp_path, 40, 50, ema, ema_model, export)
    # a run from before the teacher export kept the weights alone in teacher-<step>.safetensors: still read
    save_file({name: p.detach().contiguous() for name, p in teacher.named_parameters()},
              legacy_teacher_file(tmp_path, 40))
    legacy = frozen_teacher(accelerator, tmp_path, 40, 50, ema, ema_model, export)
    assert all(torch.equal(a, b) for a, b in zip(legacy.parameters(), teacher.parameters(), strict=True))
    save_file({"not.a.weight": torch.zeros(2)}, legacy_teacher_file(tmp_path, 30))
    with pytest.raises(ValueError, match=r"teacher-30.safetensors does not hold this model's weights"):
        frozen_teacher(accelerator, tmp_path, 30, 50, ema, ema_model, export)


def test_a_failed_teacher_export_stops_the_run_with_a_message(tmp_path):
    from accelerate import Accelerator

    from eidos.training.checkpoint import CheckpointError
    from eidos.training.teacher import frozen_teacher

    model = make_tiny_model()
    ema = EMA(model, decay=0.999)

    def full_disk(folder):
        raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match=r"could not write the consistency teacher .*teacher-8: OSError"):
        frozen_teacher(Accelerator(cpu=True), tmp_path, 8, 8, ema, make_tiny_model(), full_disk)


def test_the_frozen_teacher_objective_calls_the_teacher_not_the_student():
    student, teacher = GaussianVelocity(MU, SIGMA0), GaussianVelocity(MU, SIGMA0)
    batch = Batch(MU + SIGMA0 * torch.randn(4, 3, 16, 16), TextEmbeddings(torch.zeros(4, 16)))
    config = ObjectiveConfig(consistency_teacher="frozen")
    with pytest.raises(ValueError, match="needs the frozen teacher"):
        FACMObjective(config, patch_size=4)
    _, parts = FACMObjective(config, patch_size=4, teacher=teacher)(student, batch)
    assert (student.calls, teacher.calls) == (3, 1)  # flow anchor + G + JVP pass; the teacher's one batched call


@pytest.mark.parametrize("start_from_ema", [True, False])
def test_a_stage_can_start_from_the_ema_weights(tmp_path, synthetic_data, start_from_ema):
    """With start_from_ema the consistency stage's live weights begin as the EMA of its first step (the frozen
    teacher); without it they continue from the raw weights. The stage's learning rate is ~0, so the weights
    at the end of the run are those the stage began with."""
    from safetensors.torch import load_file

    from eidos.config import default_config_path
    from eidos.training.loop import train
    from tests.conftest import tiny_run_overrides

    stages = ("train.stages=[{name: flow, fraction: 0.5, mask_ratio: 0.0, consistency: false}, "
              "{name: consistency, fraction: 0.5, mask_ratio: 0.0, learning_rate: 1.0e-12, restart_ema: true, "
              f"start_from_ema: {str(start_from_ema).lower()}}}]")
    run = tmp_path / "run"
    overrides = [*tiny_run_overrides(run, synthetic_data, max_steps=12), stages, "train.checkpoint_every=6",
                 "train.sample_every=1000"]
    train(load_config(default_config_path(), overrides))
    ema_then = load_file(run / "checkpoint-6" / "ema.safetensors")
    def live_weights(checkpoint):  # the trained module's names carry a "model." prefix
        return {name.removeprefix("model."): t for name, t in load_file(run / checkpoint / "model.safetensors").items()}

    raw_then, final = live_weights("checkpoint-6"), live_weights("checkpoint-12")
    teacher = load_file(run / "teacher-6" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert teacher.keys() == ema_then.keys() == final.keys()
    assert all(torch.equal(teacher[name], ema_then[name]) for name in teacher)
    began_with = ema_then if start_from_ema else raw_then
    other = raw_then if start_from_ema else ema_then
    assert all(torch.allclose(final[name], began_with[name], rtol=0, atol=1e-8) for name in final)
    assert max((final[name] - other[name]).abs().max().item() for name in final) > 1e-4


def test_the_benchmarks_peer_is_plain_flow_matching_with_the_recipes_optimizer():
    """benchmarks/recipe.py's peer: one unmasked flow stage at the recipe's learning rate, no consistency, no MAE;
    the optimizer is the config's (its own overrides can change it)."""
    from benchmarks.recipe import peer_overrides

    config = load_config(None, peer_overrides(None, ["train.stages.0.learning_rate=3e-3"]))
    assert config.objective.consistency_weight == 0 and config.objective.mae_weight == 0
    assert [(s.mask_ratio, s.learning_rate, s.consistency) for s in config.train.stages] == [(0.0, 3e-3, False)]
    assert config.train.optimizer == load_config(None).train.optimizer


def test_the_benchmark_refuses_to_reuse_runs_trained_with_other_settings(tmp_path):
    from benchmarks.recipe import check_same_runs

    settings = {"config": None, "recipe": ["objective.guidance_scale=2.5"], "seed": 0}
    check_same_runs(tmp_path, settings)
    check_same_runs(tmp_path, dict(settings))  # the same settings: the runs are reused
    with pytest.raises(SystemExit, match=r"other settings \(recipe: \['objective.guidance_scale=2.5'\] -> \[\]; "
                                         r"seed: 0 -> 1\)"):
        check_same_runs(tmp_path, {**settings, "recipe": [], "seed": 1})


def test_the_benchmark_averages_each_row_over_training_seeds():
    from benchmarks.recipe import over_seeds, table_rows

    def result(frechet, top5):
        return {"rows": [{"images": "real held-out", "frechet": 1.15, "top-1": 0.25, "top-5": 0.45},
                         {"images": "consistency 1 step", "nfe": 1, "frechet": frechet, "frechet std": 0.1,
                          "top-1": 0.1, "top-5": top5}]}

    seeds = [table_rows([("recipe", result(f, t)), ("peer", result(1.0, 0.3))])
             for f, t in ((1.2, 0.24), (1.4, 0.26))]
    assert list(seeds[0]) == ["real held-out", "recipe, consistency 1 step", "peer, consistency 1 step"]
    nfe, row = over_seeds(seeds)["recipe, consistency 1 step"]
    assert nfe == "1" and row["frechet"] == pytest.approx(1.3) and row["top-5"] == pytest.approx(0.25)
    assert row["frechet std"] == pytest.approx(0.1414, abs=1e-4)  # over the seeds, not the rounds' 0.1
    assert row["top-1 std"] == 0 and "frechet std" not in over_seeds(seeds)["real held-out"][1]
    # the NFE column is what eval recorded for each sampler row; "-" for the real images
    flow = {"rows": [{"images": "real held-out", "frechet": 1.15}, {"images": "flow 8 steps, CFG 1.75", "nfe": 16}]}
    assert [n for n, _ in table_rows([("peer", flow)]).values()] == ["-", "16"]


def test_the_benchmark_reuses_an_eval_only_if_it_records_each_rows_cost(tmp_path, monkeypatch):
    import benchmarks.recipe as recipe

    real = {"images": "real held-out", "frechet": 1.15}
    calls = []

    def fake_eidos(*args, log):  # `eidos eval ... --out FILE`: writes the current format
        calls.append(args)
        rows = [real, {"images": "flow 2 steps", "nfe": 4}]
        Path(args[args.index("--out") + 1]).write_text(json.dumps({"rows": rows}))
        return 0.0

    monkeypatch.setattr(recipe, "eidos", fake_eidos)

    def score():
        return recipe.evaluate("peer", tmp_path / "peer", tmp_path, ["--flow-steps", "2"])

    assert score()["rows"][1]["nfe"] == 4 and len(calls) == 1
    assert score()["rows"][1]["nfe"] == 4 and len(calls) == 1  # reused
    result = tmp_path / "peer.eval_flow-steps_2.json"
    result.write_text(json.dumps({"rows": [real, {"images": "flow 2 steps"}]}))  # from an eval before the NFE
    assert score()["rows"][1]["nfe"] == 4 and len(calls) == 2  # scored again


def test_the_shape_sets_captions_name_where_each_shape_is():
    """benchmarks/shape_set.py: each shape's pixels (its colour) lie in the grid cell its caption names, and a
    large shape covers more of the image than any small one of the same kind."""
    import random
    import re

    import numpy as np

    from benchmarks.glyph_set import FOREGROUNDS
    from benchmarks.shape_set import POSITIONS, draw_shapes

    rng, areas = random.Random(3), {}
    for _ in range(80):
        image, caption = draw_shapes(rng, 96)
        pixels = np.asarray(image, dtype=np.int32)
        named = re.findall(r"a (small|large) (\w+) (\w+) at ([a-z ]+?)(?= and | on )", caption)
        assert named and caption.startswith("a "), caption
        if len({colour for _, colour, _, _ in named}) < len(named):
            continue  # two shapes of one colour: their pixels cannot be told apart
        for size, colour, shape, position in named:
            near = np.abs(pixels - np.array(FOREGROUNDS[colour])).sum(-1) < 30
            rows, columns = np.nonzero(near)
            assert (int(columns.mean() * 3 / 96), int(rows.mean() * 3 / 96)) == POSITIONS[position], caption
            areas.setdefault((shape, size), []).append(near.mean())
    shapes = {shape for shape, _ in areas}
    assert len(areas) >= 12
    for shape in shapes:
        if (shape, "small") in areas and (shape, "large") in areas:
            assert min(areas[shape, "large"]) > max(areas[shape, "small"]), shape


def test_train_names_the_exported_teacher_when_it_finishes(tmp_path, synthetic_data, capsys):
    """The default's stages (masked flow, flow, consistency) on a tiny run: the teacher is exported when the
    consistency stage begins, loads as a pipeline, and `eidos train` says where it is."""
    from eidos.cli.main import main
    from eidos.config import default_config_path
    from eidos.sampling.pipeline import is_pipeline_folder
    from tests.conftest import tiny_run_overrides

    run = tmp_path / "run"
    config = load_config(default_config_path(), tiny_run_overrides(run, synthetic_data, max_steps=12))
    start = sum(config.train.stage_steps()[:2])
    assert main(["train", *tiny_run_overrides(run, synthetic_data, max_steps=12), "train.tracker=none"]) == 0
    assert is_pipeline_folder(run / f"teacher-{start}")
    assert f"the flow model its consistency stage distilled in {run / f'teacher-{start}'}" in capsys.readouterr().out
