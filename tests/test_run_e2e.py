"""A short `omniloop sim` run writes every artifact of its run folder, and --resume continues it."""

import os
import subprocess
import sys

import imageio.v3 as iio
import pytest

from agent.checkpoint import load_checkpoint
from agent.cli import main
from agent.episodes import read_episode
from agent.metrics import read_metrics

SMALL = [
    "env.episode_length=20", "run.seed_steps=30", "run.warmup_updates=2", "run.checkpoint_every=2",
    "learner.batch_size=8", "planner.samples=32", "planner.elites=8", "planner.iterations=2",
    "worldmodel.d_model=32", "worldmodel.latent_dim=32", "worldmodel.head_hidden=32",
    "worldmodel.dynamics_width=32", "worldmodel.moe.expert_hidden=32",
]


def test_sim_run_writes_every_artifact_and_resumes(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "agent.cli", "sim", "--steps", "60", "--seed", "3", "--out", str(run_dir),
           "--no-progress", *SMALL]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "MUJOCO_GL": "egl"})
    assert done.returncode == 0, done.stderr
    assert "done: 60 agent steps" in done.stdout

    for name in ("config.yaml", "metrics.csv", "checkpoint.safetensors", "learning_curve.png", "health.png",
                 "last_episode.mp4"):
        assert (run_dir / name).is_file(), name
    rows = read_metrics(run_dir / "metrics.csv")
    assert [r["env_step"] for r in rows] == [20, 40, 60]
    assert {"return", "success", "surprise", "plan_think_ms", "train_loss", "moe_max_load"} <= set(rows[-1]) | {
        k.removeprefix("train_") for k in rows[-1]}
    episodes = sorted((run_dir / "episodes").glob("*.mcap"))
    assert len(episodes) == 3
    ep = read_episode(episodes[-1])
    assert ep.complete and len(ep.steps) == 20
    assert ep.steps[5].observation["image"].shape == (64, 64, 3)
    assert ep.steps[5].plan is not None and ep.steps[5].surprise is not None
    assert ep.steps[5].sim_state["qpos"].shape == (3,)  # the MuJoCo state, for exact replay
    assert ep.steps[5].action_applied.shape == (2,)
    assert "model.xml" in ep.attachments and "config.yaml" in ep.attachments
    # what the loop records: per step the state o_t was seen in and the model's picture of o_t; the
    # observation the last action led to closes the file; the metadata and the recorder's counts
    assert [s.step for s in ep.steps] == list(range(20)) and ep.final is not None and ep.final.step == 20
    assert all(s.imagined is not None and s.imagined.shape == (64, 64, 3) for s in ep.steps + [ep.final])
    assert all(s.time_ns <= s.action_time_ns <= s.result_time_ns for s in ep.steps)
    assert ep.metadata["control_hz"] == "20" and ep.metadata["objective"] == "env: the reward of reach"
    assert ep.recording == {"steps": "21", "dropped_steps": "0", "failure": ""}
    from agent.replay import EXACT, replay_actions, replay_states

    assert replay_states(ep).first_divergence(EXACT) is None  # the recorded states render the recorded frames, bit for bit
    actions = replay_actions(ep)
    assert actions.first_divergence() is None and len(actions.steps) == 21
    assert {"record_dropped_steps", "record_failed"} <= set(rows[-1]) and rows[-1]["record_failed"] == 0
    video = iio.imread(run_dir / "last_episode.mp4")
    assert video.shape[0] == 21  # the first frame and one per step
    assert video.shape[2] > 2 * video.shape[1] * 0.9  # two panels side by side
    _, meta = load_checkpoint(run_dir / "checkpoint.safetensors")
    assert meta["env_step"] == 60 and meta["episode"] == 3
    assert isinstance(meta["deliberation"]["agreement"], float)  # what the fast path has earned goes on after a resume
    assert meta["memory"]["size"] == 63  # 60 steps and each episode's last observation
    updates_before = meta["learner"]["updates"]

    # a fresh run into the same folder is refused: it would mix two runs
    assert main(["sim", "--steps", "80", "--out", str(run_dir), "--no-progress", *SMALL]) == 2

    # a resumed run keeps its config: a change to what the agent is, is refused by name, and nothing is written
    saved = (run_dir / "config.yaml").read_bytes()
    assert main(["sim", "--resume", str(run_dir), "--no-progress", "learner.lr=0.01", "planner.samples=64"]) == 2
    assert "learner.lr 0.0003 -> 0.01, planner.samples" in capsys.readouterr().err
    assert (run_dir / "config.yaml").read_bytes() == saved

    # --resume continues where the run stopped, with the saved config. An episode that ended after the
    # last checkpoint (a kill before the next one) runs again: its row goes, its file is set aside.
    with (run_dir / "metrics.csv").open("a") as file:
        file.write("80,4\n")
    (run_dir / "episodes" / "episode_000003.mcap").write_bytes(episodes[0].read_bytes())
    assert main(["sim", "--resume", str(run_dir), "--steps", "100", "--no-progress"]) == 0
    assert (run_dir / "episodes" / "episode_000003.mcap.abandoned").read_bytes() == episodes[0].read_bytes()
    rows = read_metrics(run_dir / "metrics.csv")
    assert [r["env_step"] for r in rows] == [20, 40, 60, 80, 100]
    assert rows[-1]["wall_s"] > rows[2]["wall_s"]
    assert len(list((run_dir / "episodes").glob("*.mcap"))) == 5
    _, meta = load_checkpoint(run_dir / "checkpoint.safetensors")
    assert meta["env_step"] == 100 and meta["episode"] == 5
    assert meta["memory"]["size"] == 105  # the memory came back and grew: it was not started anew
    assert meta["learner"]["updates"] >= updates_before + 40  # one update per step, counted on from before


def test_state_only_task_that_terminates_runs_end_to_end(tmp_path, monkeypatch):
    """gym:InvertedPendulum-v5 from state: no image (no decoder, no video), no success, early termination."""
    from planner.deliberation import Deliberation

    rewards = []  # the loop reports every step's reward to the promise check
    monkeypatch.setattr(Deliberation, "rewarded", lambda self, reward: rewards.append(reward))
    run_dir = tmp_path / "pendulum"
    args = ["sim", "--env", "gym:InvertedPendulum-v5", "--steps", "60", "--out", str(run_dir), "--no-progress",
            "env.pixels=false", *SMALL, "run.warmup_updates=0"]
    assert main(args) == 0
    assert len(rewards) == 60
    rows = read_metrics(run_dir / "metrics.csv")
    assert rows[-1]["env_step"] == 60 and len(rows) > 3  # a random pendulum falls within a few steps
    assert rows[-1]["updates"] >= 60 - 30  # no warmup asked for: learning starts all the same
    assert all("success" not in r for r in rows)
    assert (run_dir / "checkpoint.safetensors").is_file() and (run_dir / "learning_curve.png").is_file()
    assert not (run_dir / "last_episode.mp4").exists()
    ep = read_episode(sorted((run_dir / "episodes").glob("*.mcap"))[0])
    assert ep.steps[-1].terminated and "image" not in ep.steps[0].observation


def test_an_unknown_task_is_refused_before_anything_is_written(tmp_path, capsys):
    assert main(["sim", "--env", "gym:NoSuchEnv-v0", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "NoSuchEnv" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_run_folder_another_process_holds_is_refused_by_name(tmp_path, capsys, monkeypatch):
    """Two runs writing one folder would mix their rows: the second is refused before it writes."""
    from agent import run_lock

    run_dir = tmp_path / "r"
    built = []
    monkeypatch.setattr("agent.loop.make_body", lambda *a: built.append(a))  # a robot would be connected here
    with run_lock.hold(run_dir):  # as another process would: flock conflicts across open files
        assert main(["sim", "--steps", "10", "--out", str(run_dir), "--no-progress", *SMALL]) == 2
        assert f"{run_dir} is in use by another process (pid {os.getpid()})" in capsys.readouterr().err
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"] and not built
    assert not run_dir.exists()  # the folder the lock made, and nothing wrote to, is gone
    monkeypatch.undo()
    assert main(["sim", "--steps", "10", "--out", str(run_dir), "--no-progress", *SMALL]) == 0  # free again


def test_a_corrupt_checkpoint_is_named_not_a_traceback(tmp_path, capsys):
    from agent.config import load_config, save_config

    save_config(load_config(None, SMALL), tmp_path / "config.yaml")
    (tmp_path / "checkpoint.safetensors").write_bytes(b"not a checkpoint")
    assert main(["sim", "--resume", str(tmp_path), "--no-progress"]) == 2
    assert "checkpoint.safetensors" in capsys.readouterr().err


def test_evaluation_reports_every_reward_and_surprise_to_the_deliberation():
    """The promise check needs the rewards in evaluation too, or a stuck search would stay stuck there;
    the thinking budget needs the surprise, or it would never leave 1x there. And an evaluation
    leaves every random stream of the agent as it found it."""
    import torch

    import sim
    from agent.brain import Brain
    from agent.config import load_config
    from agent.evaluate import evaluate_agent

    cfg = load_config(None, SMALL)
    env = sim.make(cfg.env, seed=0)
    brain = Brain(cfg, sim.observation_spec(env.observation_space), env.action_space.shape[0])
    rewards, surprises = [], []
    brain.deliberation.rewarded = rewards.append
    observe = brain.deliberation.observe
    brain.deliberation.observe = lambda s: surprises.append(s) or observe(s)
    streams = (torch.random.get_rng_state(), brain.plan_rng.get_state(), brain.rng.bit_generator.state,
               brain.memory.rng.bit_generator.state)
    try:
        ev = evaluate_agent(env, brain, episodes=2)
    finally:
        env.close()
    assert len(rewards) == 2 * 20
    assert sum(rewards) / 2 == pytest.approx(ev.mean_return)
    assert len(surprises) == 2 * 20 and all(s > 0 for s in surprises)
    assert brain.deliberation.surprise_mean is None  # and none of it kept after the evaluation
    # nor any random number: training goes on as it would have without the evaluation
    after = (torch.random.get_rng_state(), brain.plan_rng.get_state(), brain.rng.bit_generator.state,
             brain.memory.rng.bit_generator.state)
    assert torch.equal(after[0], streams[0]) and torch.equal(after[1], streams[1])
    assert after[2:] == streams[2:]
