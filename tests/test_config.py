"""The config tree: YAML, overrides, and clear refusals."""

import pytest

from agent.cli import DEFAULT_CONFIG, main
from agent.config import Config, ConfigError, load_config


def test_defaults_and_the_shipped_default_yaml_load():
    assert isinstance(load_config(None), Config)
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg.env.name == "reach"


@pytest.mark.parametrize("name", sorted(p.name for p in DEFAULT_CONFIG.parent.glob("*.yaml")))
def test_every_shipped_config_loads_and_passes_validation(name):
    # A shipped config that fails its own checks (say, learner.td_steps past learner.horizon) would
    # only show when a user runs it.
    assert isinstance(load_config(DEFAULT_CONFIG.parent / name), Config)


def test_overrides_reach_any_field_and_keep_types():
    cfg = load_config(None, ["planner.horizon=5", "learner.lr=1e-3", "worldmodel.moe.dense=true", "run.out=x"])
    assert cfg.planner.horizon == 5
    assert cfg.learner.lr == pytest.approx(1e-3)
    assert cfg.worldmodel.moe.dense is True
    assert cfg.run.out == "x"
    assert load_config(None, ["learner.lr=1"]).learner.lr == 1.0  # an int is a fine float


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"planner\.horizn"):
        load_config(None, ["planner.horizn=5"])
    f = tmp_path / "c.yaml"
    f.write_text("worldmodel:\n  moe:\n    experts: 8\n")
    with pytest.raises(ConfigError, match=r"worldmodel\.moe\.experts"):
        load_config(f)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"planner\.horizon must be int, got 'five'"):
        load_config(None, ["planner.horizon=five"])
    with pytest.raises(ConfigError, match=r"worldmodel\.moe\.dense must be bool"):
        load_config(None, ["worldmodel.moe.dense=3"])
    with pytest.raises(ConfigError, match=r"planner must be a mapping"):
        load_config(None, ["planner=3"])


def test_missing_and_malformed_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("planner: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(None, ["planner.horizon"])


def test_cli_refuses_bad_config_with_a_message(capsys, tmp_path):
    assert main(["sim", "--steps", "10", "planner.horizn=5", "--out", str(tmp_path / "r")]) == 2
    assert "unknown config key planner.horizn" in capsys.readouterr().err
    assert main(["sim", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["sim", "--resume", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing was started


def test_changed_fields_are_the_shared_keys_whose_values_differ():
    from agent.config import changed_fields

    saved = {"run": {"steps": 10, "seed": 0}, "learner": {"lr": 0.001}}
    now = {"run": {"steps": 20, "seed": 0, "added_since": True}, "learner": {"lr": 0.002}}
    assert changed_fields(saved, now) == ["learner.lr", "run.steps"]  # a field new to the code is not a change


def test_cuda_without_a_cuda_device_is_a_clear_error(capsys, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU build
    assert main(["sim", "--steps", "10", "--device", "cuda", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "torch sees no CUDA device" in capsys.readouterr().err and not (tmp_path / "r").exists()


@pytest.mark.parametrize("override, field", [
    ("worldmodel.moe.top_k=5", "worldmodel.moe.top_k"),
    ("planner.elites=999", "planner.elites"),
    ("worldmodel.latent_dim=100", "worldmodel.latent_dim"),
    ("run.checkpoint_every=0", "run.checkpoint_every"),
    ("run.device=gpu", "run.device"),
    ("env.name=mujoco:ant", "env.name"),
    ("env.image_size=48", "env.image_size"),
    ("env.frame_stack=0", "env.frame_stack"),
    ("learner.snapshot_every=0", "learner.snapshot_every"),
    ("deliberation.promise_window=-1", "deliberation.promise_window"),
    ("deliberation.promise_tolerance=0", "deliberation.promise_tolerance"),
    ("worldmodel.num_q=1", "worldmodel.num_q"),
    ("worldmodel.value_heads=6", "worldmodel.value_heads"),
    ("run.warmup_updates=-1", "run.warmup_updates"),
    ("learner.reconstruct_samples=0", "learner.reconstruct_samples"),
    ("planner.temperature=0", "planner.temperature"),
    ("planner.min_std=3", "planner.min_std"),
    ("planner.discount=0.99", "planner.discount"),
])
def test_values_that_cannot_work_are_refused_by_name(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])


def test_named_options_are_taken_as_typed_values(tmp_path):
    from agent.cli import build_parser, run_config

    args = build_parser().parse_args(["sim", "--out", str(tmp_path / "2024"), "--steps", "7", "planner.horizon=4"])
    cfg, run_dir = run_config(args)
    assert run_dir == tmp_path / "2024" and cfg.run.out == str(tmp_path / "2024")  # a numeric name stays a path
    assert cfg.run.steps == 7 and cfg.planner.horizon == 4


@pytest.mark.parametrize("overrides, field", [
    (["env.name=dmc:reacher-easy", "env.pixels=false", "env.frame_stack=3"], "env.frame_stack"),
    (["env.name=dmc:reacher-easy", "env.pixels=false", "env.proprio=false"], "env.proprio"),
    (["env.pixels=false", "env.frame_stack=2"], "env.frame_stack"),
    (["env.pixels=false", "env.proprio=false"], "env.proprio"),
])
def test_observation_options_that_leave_nothing_to_see_are_refused(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, overrides)


def test_an_action_repeat_reach_would_ignore_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"env\.action_repeat must be 0 or 1 on reach.*got 2"):
        load_config(None, ["env.action_repeat=2"])
    assert load_config(None, ["env.name=dmc:reacher-easy", "env.action_repeat=4"]).env.action_repeat == 4
