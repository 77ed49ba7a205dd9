from pathlib import Path

import pytest

from eidos.cli.main import main
from eidos.config import Config, default_config_path, load_config

REPO = Path(__file__).resolve().parents[1]


def test_default_config_file_is_the_embedded_default():
    config = load_config(default_config_path())
    assert config.data.source == "openmoji" and config.encoders.codec == "pixels"
    assert config.model.preset == "tiny" and config.train.stage_steps() == [317, 823, 100]
    assert config.train.optimizer == "muon"
    assert config.model.branch_embedding and config.train.stages[-1].start_from_ema
    assert not config.objective.pretrain_consistency_branch
    assert [s.mask_ratio for s in config.train.stages] == [0.5, 0.0, 0.0]
    assert [s.consistency for s in config.train.stages] == [False, False, True]
    assert config.objective.consistency_teacher == "frozen" and config.train.stages[-1].restart_ema


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")))
def test_shipped_configs_validate(path):
    assert isinstance(load_config(path), Config)


def test_dotted_overrides_reach_nested_keys_and_list_items():
    config = load_config(None, ["train.max_steps=200", "model.width=144", "train.stages.1.learning_rate=1e-4",
                                "objective.guidance_interval=[0.1, 0.5]"])
    assert config.train.max_steps == 200 and config.model.width == 144
    assert config.train.stages[1].learning_rate == 1e-4
    assert config.objective.guidance_interval == (0.1, 0.5)
    assert config.train.stage_steps() == [80, 80, 40]
    staged = load_config(None, ["train.optimizer=muon", "train.stages.2.optimizer=adamw"])
    assert staged.train.stage_optimizers() == ["muon", "muon", "adamw"]


@pytest.mark.parametrize("override,message", [
    ("train.max_step=3", r"unknown config key 'train.max_step'; did you mean 'train.max_steps'\?"),
    ("modle.preset=tiny", r"unknown config key 'modle'; did you mean 'model'\?"),
    ("train.max_steps=many", r"config key 'train.max_steps' must be of type int, got 'many'"),
    ("train.stages.0.mask_ratio=1.0", r"train.stages.masked flow.mask_ratio.*expected in \[0, 1\)"),
    ("model.preset=huge", r"model.preset.*'huge'.*expected one of"),
    ("model.width=256", r"model.width.*256.*a positive multiple of 4 and of model.heads = 3"),  # tiny: 3 heads
    ("model.width=198", r"model.width.*198.*a positive multiple of 4 and of model.heads = 3"),
    ("model.heads=0", r"model.heads.*0.*at least 1"),
    ("model.decoder_heads=3", r"model.decoder_width.*128.*a positive multiple of 4 and of model.decoder_heads = 3"),
    ("train.optimizer=sgd", r"train.optimizer.*'sgd'.*expected one of \('adamw', 'muon'\)"),
    ("train.stages.2.optimizer=lion", r"train.stages.consistency.optimizer.*'lion'.*expected one of"),
    ("train.batch_size=30", r"train.batch_size.*a multiple of train.grad_accumulation_steps=4"),
    ("train.mixed_precision=no", r"'train.mixed_precision' must be of type str, got False \(YAML reads an unquoted no"),
    ("train.mixed_precision=fp8", r"train.mixed_precision.*'fp8'.*expected 'auto', 'no', 'bf16' or 'fp16'"),
])
def test_bad_values_are_refused_with_the_key_named(override, message):
    overrides = [override, "train.grad_accumulation_steps=4"] if "batch_size" in override else [override]
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)


def test_skipping_the_pretraining_of_the_consistency_branch_needs_the_branch_embedding():
    signed = ["model.branch_embedding=false", "objective.pretrain_consistency_branch=true"]
    config = load_config(default_config_path(), signed)
    assert config.objective.pretrain_consistency_branch
    with pytest.raises(ValueError, match=r"objective.pretrain_consistency_branch.*unless model.branch_embedding"):
        load_config(default_config_path(), ["model.branch_embedding=false"])


def test_unknown_key_in_a_file_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  max_steps: 10\n  learning_rat: 0.1\n")
    with pytest.raises(ValueError, match="unknown config key 'train.learning_rat'"):
        load_config(path)


def test_cli_refuses_a_mistyped_key_before_any_work(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["train", "--output-dir", str(run_dir), "train.max_stepz=5"])
    assert code == 2
    assert "unknown config key 'train.max_stepz'" in capsys.readouterr().err
    assert not run_dir.exists()


def test_train_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for option in ("--config", "--output-dir", "--max-steps", "--checkpoint-every", "--seed", "key.path=value"):
        assert option in text


def test_sample_refuses_a_folder_without_a_model(tmp_path, capsys):
    code = main(["sample", "--checkpoint", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "x.png")])
    assert code == 2 and "is not an exported model" in capsys.readouterr().err


def test_a_batch_that_does_not_split_over_processes_is_refused():
    from eidos.training.schedule import micro_batch_size

    config = load_config(None, ["train.batch_size=30", "train.grad_accumulation_steps=2"])
    assert micro_batch_size(config.train, world=1) == 15 and micro_batch_size(config.train, world=3) == 5
    with pytest.raises(ValueError, match=r"train.batch_size=30 must be divisible by processes \(2\) x "
                                         r"train.grad_accumulation_steps \(2\); e.g. use train.batch_size=28"):
        micro_batch_size(config.train, world=2)


def test_the_data_section_holds_only_the_keys_its_source_reads():
    config = load_config(None, ["data.source=cache", "data.train_files=c/*.h5", "data.in_memory=false"])
    assert config.to_dict()["data"] == {"source": "cache", "resolution": 32, "train_files": "c/*.h5",
                                        "held_out_files": "", "in_memory": False}
    assert set(load_config(None).to_dict()["data"]) == {"source", "resolution", "cache_dir", "held_out_fraction",
                                                        "split_seed", "skin_tone_variants"}
    with pytest.raises(ValueError, match=r"'data.shuffle_buffer' does not apply to data.source='cache' \(only "
                                         r"'shards' read it\)"):
        load_config(None, ["data.source=cache", "data.train_files=c/*.h5", "data.shuffle_buffer=4"])


def test_a_key_of_another_source_in_a_file_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  source: shards\n  train_files: s/*.tar\n  in_memory: false\n")
    with pytest.raises(ValueError, match=r"'data.in_memory' does not apply to data.source='shards'"):
        load_config(path)


def test_an_override_of_the_source_leaves_the_files_keys_for_its_old_source_behind():
    xl = REPO / "configs" / "maskdit-xl2-sdxl-clip-256.yaml"  # data.source cache, data.in_memory false
    config = load_config(xl, ["data.source=shards", "data.train_files=shards/*.tar"])
    assert config.data.source == "shards" and config.data.train_files == "shards/*.tar"
    assert config.data.held_out_files == "data/cache/val-*.h5" and not hasattr(config.data, "in_memory")
    config = load_config(default_config_path(), ["data.source=cache", "data.train_files=c/*.h5"])
    assert config.data.source == "cache" and not hasattr(config.data, "skin_tone_variants")


FLAT_DATA = {"source": "cache", "resolution": 16, "cache_dir": "", "train_files": "c/*.h5", "held_out_files": "",
             "held_out_fraction": 0.05, "split_seed": 0, "skin_tone_variants": "drop", "in_memory": False,
             "shuffle_buffer": 1000}


def test_an_older_flat_data_section_still_loads(tmp_path):
    """Run folders' config.yaml from before one section per source held every source's keys."""
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"data": FLAT_DATA}))
    assert load_config(path).to_dict()["data"] == {"source": "cache", "resolution": 16, "train_files": "c/*.h5",
                                                    "held_out_files": "", "in_memory": False}
    path.write_text(yaml.safe_dump({"data": {**FLAT_DATA, "shuffle_buffer": 8}}))  # set, not the old default
    with pytest.raises(ValueError, match=r"'data.shuffle_buffer' does not apply to data.source='cache'"):
        load_config(path)
