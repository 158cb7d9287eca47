"""Offline learning: recorded episodes fill the memory as the loop would have, the learner trains on
them, and `omniloop sim --init` goes on online from that brain; a brain that does not fit is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agent.cli import main
from agent.episodes import EpisodeError, read_episode
from agent.metrics import read_metrics
from agent.offline import fill_memory, observation_spec, read_episodes
from test_benchmarks import TINY
from test_replay import record_episode

SMALL = [o for o in TINY if not o.startswith(("env.", "run."))]  # the model's size; the episodes set the env


def recorded_run(tmp_path: Path) -> Path:
    """A run folder with two recorded 25-step episodes of the reach task."""
    run = tmp_path / "recorded"
    record_episode(run, seed=3)
    first = run / "episodes" / "episode_000000.mcap"
    first.rename(run / "episodes" / "episode_000007.mcap")
    record_episode(run, seed=4)
    return run


def test_train_learns_from_episodes_and_sim_init_goes_on_online(tmp_path: Path, capsys) -> None:
    run = recorded_run(tmp_path)
    out = tmp_path / "offline"
    assert main(["train", "--episodes", str(run), "--updates", "60", "--out", str(out), "--no-progress", *SMALL]) == 0
    assert "60 learner steps on 50 transitions of 2 episodes" in capsys.readouterr().out  # 25 per episode
    rows = read_metrics(out / "metrics.csv")
    assert [r["update"] for r in rows] == [50, 60] and all(np.isfinite(r["train_loss"]) for r in rows)
    assert (out / "checkpoint.safetensors").is_file() and (out / "health.png").stat().st_size > 0

    online = tmp_path / "online"
    assert main(["sim", "--init", str(out / "checkpoint.safetensors"), "--steps", "20", "--out", str(online),
                 "--no-progress", "run.seed_steps=0", "env.episode_length=10", *SMALL, "learner.lr=0.002"]) == 0
    first = read_metrics(online / "metrics.csv")[0]
    assert first["updates"] > 60  # the learner went on from the offline brain: no seed phase
    from agent.checkpoint import load_checkpoint

    _, offline_meta = load_checkpoint(out / "checkpoint.safetensors")
    _, online_meta = load_checkpoint(online / "checkpoint.safetensors")
    assert offline_meta["memory"]["size"] == 52  # 2 files of 25 steps and their final observations
    assert online_meta["memory"]["size"] == 52 + 22  # and the memory went on: 2 online episodes of 10 steps
    assert [g["lr"] for g in online_meta["pi_optim"]["param_groups"]] == [0.002]  # at the new run's own rate

    # a second `train` into the same folder is refused: its metrics would mix two runs
    assert main(["train", "--episodes", str(run), "--updates", "5", "--out", str(out), "--no-progress", *SMALL]) == 2
    assert "already holds a run" in capsys.readouterr().err
    # and so is one into a folder another process is writing
    from agent import run_lock

    busy = tmp_path / "busy"
    with run_lock.hold(busy):
        assert main(["train", "--episodes", str(run), "--updates", "5", "--out", str(busy), "--no-progress", *SMALL]) == 2
    assert "is in use by another process" in capsys.readouterr().err and not busy.exists()


def test_a_brain_that_does_not_fit_is_refused_and_leaves_no_run(tmp_path: Path, capsys) -> None:
    run = recorded_run(tmp_path)
    out = tmp_path / "offline"
    assert main(["train", "--episodes", str(run), "--updates", "5", "--out", str(out), "--no-progress", *SMALL]) == 0
    capsys.readouterr()
    online = tmp_path / "online"
    assert main(["sim", "--init", str(out / "checkpoint.safetensors"), "--steps", "10", "--out", str(online),
                 "--no-progress", *SMALL, "worldmodel.latent_dim=32"]) == 2
    err = capsys.readouterr().err
    assert "does not fit this config and body" in err and "size mismatch" in err and not online.exists()
    assert main(["train", "--episodes", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "nothing: no such folder" in capsys.readouterr().err
    (tmp_path / "nothing").mkdir()
    assert main(["train", "--episodes", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "nothing: no episode files" in capsys.readouterr().err


def test_recorded_frames_are_stacked_again_as_the_env_stacked_them(tmp_path: Path) -> None:
    from agent.brain import Brain
    from agent.config import Config

    run = recorded_run(tmp_path)
    episodes = read_episodes(run)
    spec = observation_spec(episodes, frame_stack=3)
    assert spec["image"] == ((64, 64, 9), "uint8") and spec["proprio"] == ((8,), "float32")
    cfg = Config()
    cfg.env.frame_stack, cfg.memory.capacity = 3, 100
    brain = Brain(cfg, spec, action_dim=2)
    assert fill_memory(brain, episodes, frame_stack=3) == 50
    frames = [s.observation["image"] for s in read_episode(run / "episodes" / "episode_000000.mcap").steps]
    start = 26  # the second file's first step: 25 steps and the final observation before it
    np.testing.assert_array_equal(brain.memory.obs["image"][0], np.concatenate([frames[0]] * 3, axis=-1))
    np.testing.assert_array_equal(brain.memory.obs["image"][2], np.concatenate(frames[:3], axis=-1))
    assert brain.memory.has_action[start - 1] == 0 and brain.memory.has_action[start - 2] == 1
    final = read_episode(run / "episodes" / "episode_000000.mcap").final
    np.testing.assert_array_equal(brain.memory.obs["proprio"][start - 1], final.observation["proprio"])
    with pytest.raises(EpisodeError, match="empty: no such folder"):
        read_episodes(tmp_path / "empty")


def test_train_init_goes_on_from_a_checkpoints_weights_on_the_episodes_given(tmp_path: Path, capsys) -> None:
    from agent.checkpoint import load_checkpoint

    run = recorded_run(tmp_path)
    first = tmp_path / "first"
    assert main(["train", "--episodes", str(run), "--updates", "20", "--out", str(first), "--no-progress", *SMALL]) == 0
    more = tmp_path / "more"
    # no --config and no model overrides: the config beside the checkpoint, so the small model, is used;
    # at a learning rate of 0 every learned weight must stay the checkpoint's, not a fresh model's
    assert main(["train", "--episodes", str(run), "--init", str(first / "checkpoint.safetensors"), "--updates", "10",
                 "--out", str(more), "--no-progress", "learner.lr=0"]) == 0
    capsys.readouterr()
    before, _ = load_checkpoint(first / "checkpoint.safetensors")
    after, meta = load_checkpoint(more / "checkpoint.safetensors")
    learned = [k for k in before if k.startswith("model.") and ".target_q." not in k]
    assert learned and all(torch.equal(before[k], after[k]) for k in learned)
    assert meta["learner"]["updates"] == 30 and meta["init"] == str(first / "checkpoint.safetensors")
    assert meta["memory"]["size"] == 52  # the episodes given, not the checkpoint's memory on top of them

    assert main(["train", "--episodes", str(run), "--init", str(tmp_path / "none.safetensors"),
                 "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "none.safetensors is not a file" in capsys.readouterr().err
    misfit = tmp_path / "misfit"
    assert main(["train", "--episodes", str(run), "--init", str(first / "checkpoint.safetensors"), "--out",
                 str(misfit), "--no-progress", "worldmodel.latent_dim=32"]) == 2
    assert "does not fit this config and body" in capsys.readouterr().err and not misfit.exists()
