"""Replay: states replay is exact, actions replay follows the recording and reports where a changed
one leaves it, and episodes that cannot be replayed say why."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

import sim
from agent.cli import main
from agent.config import Config, save_config
from agent.episodes import StepRecord, read_episode
from agent.recorder import EpisodeRecorder
from agent.replay import ReplayError, replay_actions, replay_states

STEPS = 25


def record_episode(folder: Path, env_name: str = "reach", push: float = 0.0, seed: int = 3,
                   skip: tuple[int, ...] = ()) -> Path:
    """An episode recorded as the loop records one (config attached, state before each action, the
    final observation last), with seeded random actions; `push` changes the recorded actions after
    the fact, as a bug would; the steps in `skip` are left out of the file, as a recorder that fell
    behind leaves them."""
    cfg = Config()
    cfg.env.name = env_name
    folder.mkdir(parents=True, exist_ok=True)
    save_config(cfg, folder / "config.yaml")
    env = sim.make(cfg.env, seed=cfg.run.seed)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    get_state = getattr(env.unwrapped, "get_state", None)
    path = folder / "episodes" / "episode_000000.mcap"
    meta = {"run": "test", "seed": str(seed), "env": env_name, "code_version": "test", "episode": "0"}
    with EpisodeRecorder(path, meta, {"config.yaml": (folder / "config.yaml").read_bytes()}) as recorder:
        for t in range(STEPS):
            state = get_state() if callable(get_state) else None
            action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            observation = {k: sim.newest_frame(v) if k == "image" else v for k, v in obs.items()}
            obs = next_obs
            if t in skip:
                continue
            recorder.record(StepRecord(step=t, time_ns=time.time_ns(), observation=observation,
                                       action_requested=action, action_sent=action,
                                       action_applied=action + np.float32(push) * (t >= 10), reward=float(reward),
                                       sim_state=state, surprise={"total": 0.1 * t}, plan={"think_ms": 5.0},
                                       imagined=255 - observation["image"] if "image" in observation else None))
        get = getattr(env.unwrapped, "get_state", None)
        final = {k: sim.newest_frame(v) if k == "image" else v for k, v in obs.items()}
        recorder.record(StepRecord(step=STEPS, time_ns=time.time_ns(), observation=final, action_requested=None,
                                   action_sent=None, action_applied=None, reward=None,
                                   sim_state=get() if callable(get) else None, final=True))
    env.close()
    return path


def test_states_replay_is_exact_and_a_changed_frame_is_found(tmp_path: Path, capsys) -> None:
    path = record_episode(tmp_path)
    report = replay_states(read_episode(path))
    assert len(report.steps) == STEPS and report.largest("image") == 0 and report.largest("proprio") == 0
    assert main(["replay", str(path), "--mode", "states"]) == 0
    assert "reproduces the recording exactly" in capsys.readouterr().out

    # a recording whose frame 7 differs from what its state shows (a renderer or model file changed)
    episode = read_episode(path)
    episode.steps[7].observation["image"][5, 5] ^= 0xFF
    report = replay_states(episode)
    assert report.first_divergence() == 7 and report.largest("image") > 0
    assert report.steps[6].image == 0 and report.steps[8].image == 0


def test_actions_replay_follows_the_recording_and_finds_where_changed_actions_leave_it(tmp_path: Path, capsys) -> None:
    exact = replay_actions(read_episode(record_episode(tmp_path / "a")))
    # the start, then each action's outcome: the next step's observation, the last one's the final observation
    assert [s.step for s in exact.steps] == list(range(STEPS + 1)) and exact.first_divergence() is None
    assert exact.largest("qpos") == 0 and exact.largest("reward") == 0

    pushed = record_episode(tmp_path / "b", push=0.5)  # from step 10 on, the file holds other actions
    report = replay_actions(read_episode(pushed))
    assert report.first_divergence() == 11  # the first observation that follows a changed action
    assert all(s.qpos == 0 for s in report.steps[:11]) and report.steps[-1].qpos > report.steps[12].qpos > 0
    out = tmp_path / "drift.csv"
    assert main(["replay", str(pushed), "--mode", "actions", "--out", str(out)]) == 0
    assert "leaves the recording at step 11" in capsys.readouterr().out
    lines = out.read_text().splitlines()
    assert lines[0] == "step,image,proprio,qpos,reward" and len(lines) == STEPS + 2


def test_a_body_that_cannot_set_its_state_replays_its_actions_from_its_seed_but_not_its_states(tmp_path: Path) -> None:
    path = record_episode(tmp_path, env_name="dmc:reacher-easy")
    report = replay_actions(read_episode(path))
    assert report.first_divergence() is None and report.largest("proprio") == 0
    episode = read_episode(path)
    assert episode.steps[3].sim_state["qpos"].shape == (2,)  # reacher's two joints; its target is in the model
    with pytest.raises(ReplayError, match="cannot restore a scene.*--mode actions"):
        replay_states(episode)
    without = dataclasses.replace(episode, steps=[dataclasses.replace(s, sim_state=None) for s in episode.steps])
    with pytest.raises(ReplayError, match="no step holds a simulator state.*--mode actions"):
        replay_states(without)


def test_episodes_that_cannot_be_replayed_say_why(tmp_path: Path, capsys) -> None:
    path = record_episode(tmp_path)
    episode = read_episode(path)
    robot = dataclasses.replace(episode, metadata={**episode.metadata, "env": "robot:sim:reach@tcp://127.0.0.1:5555"})
    with pytest.raises(ReplayError, match="recorded on a robot"):
        replay_actions(robot)
    with pytest.raises(ReplayError, match="no config.yaml attachment"):
        replay_actions(dataclasses.replace(episode, attachments={}))
    cfg = Config()
    cfg.env.pixels = False  # before reach honoured it, such a run still saw (and recorded) images
    save_config(cfg, tmp_path / "no_pixels.yaml")
    blind = dataclasses.replace(episode, attachments={"config.yaml": (tmp_path / "no_pixels.yaml").read_bytes()})
    with pytest.raises(ReplayError, match=r"recorded camera images.*env\.pixels=false"):
        replay_states(blind)
    broken = tmp_path / "broken.mcap"
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\xff" * 64  # a record in the middle is overwritten
    broken.write_bytes(bytes(data))
    assert main(["replay", str(broken), "--mode", "states"]) == 2
    err = capsys.readouterr().err
    assert "broken.mcap" in err and "after step" in err and "Traceback" not in err


def test_the_video_has_a_frame_per_step_with_camera_picture_and_charts(tmp_path: Path, capsys) -> None:
    import imageio.v2 as imageio

    path = record_episode(tmp_path)
    out = tmp_path / "episode.mp4"
    assert main(["replay", str(path), "--mode", "video", "--out", str(out), "--fps", "10"]) == 0
    assert f"{STEPS} frames of 1008x288" in capsys.readouterr().out
    reader = imageio.get_reader(out)
    frames = [frame for frame in reader]
    assert reader.get_meta_data()["fps"] == 10
    assert len(frames) == STEPS and frames[0].shape == (288, 1008, 3)
    # the camera panel (64x64 at 4x) and the picture beside it (its negative here) are where they belong
    camera = read_episode(path).steps[3].observation["image"].astype(int)
    shown = frames[3][20:276, 0:256].reshape(64, 4, 64, 4, 3).mean(axis=(1, 3))
    assert np.abs(shown - camera).mean() < 8  # H.264 is lossy: close, not equal
    picture = frames[3][20:276, 264:520].reshape(64, 4, 64, 4, 3).mean(axis=(1, 3))
    assert np.abs(picture - (255 - camera)).mean() < 8
    assert main(["replay", str(path), "--mode", "video"]) == 2  # --out is needed
    assert "--out" in capsys.readouterr().err


def test_view_saves_every_channel_for_the_rerun_viewer(tmp_path: Path, capsys) -> None:
    from rerun.chunk import RrdReader

    path = record_episode(tmp_path)
    out = tmp_path / "episode.rrd"
    assert main(["replay", str(path), "--mode", "view", "--save", str(out)]) == 0
    assert f"{STEPS} steps sent to Rerun" in capsys.readouterr().out
    rows = {}
    for line in RrdReader(out).store().summary().splitlines():  # "/camera rows=25 static=False timelines=[...]"
        entity, count = line.split()[:2]
        rows[entity] = int(count.removeprefix("rows="))
    for entity in ("/camera", "/imagined", "/proprio", "/action/applied", "/reward", "/surprise/total", "/plan/think_ms"):
        assert rows.get(entity) == STEPS, entity
    assert rows["/episode"] == 1


def test_no_transition_is_taken_across_a_gap_in_the_file(tmp_path: Path) -> None:
    from agent.episodes import stretches

    episode = read_episode(record_episode(tmp_path, skip=(10,)))
    found = stretches(episode)
    # steps 0-9, then 11-24 and the final observation: step 9's action has no recorded outcome
    assert [([s.step for s in body], after.step) for body, after in found] == [(list(range(9)), 9),
                                                                                (list(range(11, STEPS)), STEPS)]
    report = replay_actions(episode)  # the reach arm can be set to where the file picks up again
    assert [s.step for s in report.steps] == list(range(10)) + list(range(11, STEPS + 1))
    assert report.first_divergence() is None and report.stopped_at is None
