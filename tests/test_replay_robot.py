"""Replay on a robot, through the bridge, against `omniloop robot-server --driver sim` in its own
process: it moves to the start pose, replays at the recorded rate, goes back to rest, and on Ctrl-C
stops and goes back to rest all the same."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from test_replay import STEPS, record_episode

ROOT = Path(__file__).resolve().parents[1]


def replay(path: Path, endpoint: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "agent.cli", "replay", str(path), "--mode", "robot", "--connect", endpoint,
            "--ramp-s", "0.5", *extra]


def test_an_episode_replays_on_the_robot_from_its_start_pose_and_the_robot_goes_back_to_rest(server, tmp_path):
    srv = server("--driver", "sim")
    path = record_episode(tmp_path, seed=5)
    done = subprocess.run(replay(path, srv.endpoint), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "moving to the episode's start pose" in out and f"{STEPS} of {STEPS} steps replayed" in out
    # the simulated arm follows the recorded torques: the joints stay within a hundredth of a radian
    largest = float(out.split("largest ")[1].split()[0])
    assert largest < 0.01 and "back at rest" in out
    commands = [e for e in srv.events("command") if e["refused"] is None]
    assert len(commands) >= STEPS + 20  # the way there, the replay and the way back, all through the server


def test_ctrl_c_stops_the_replay_and_the_robot_goes_back_to_rest(server, tmp_path):
    srv = server("--driver", "sim")
    path = record_episode(tmp_path, seed=6)
    # the line is printed as the 3 s glide to the start pose begins: Ctrl-C at once lands inside it. The child
    # gets SIGINT's default action, as a terminal's foreground process has: a suite started in the background
    # (`cmd &`) ignores SIGINT, its children inherit that, and Python then raises no KeyboardInterrupt
    proc = subprocess.Popen(replay(path, srv.endpoint)[:-2] + ["--ramp-s", "3"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert "moving to" in proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, f"stdout: {out}\nstderr: {err}"
    assert "stopped at step 0" in out and "returning to rest" in out and "back at rest" in out


def test_a_robot_that_is_not_the_episodes_body_is_refused(server, tmp_path):
    srv = server("--driver", "sim")
    path = record_episode(tmp_path, env_name="dmc:reacher-easy")  # 6 proprio values; the arm has 8
    done = subprocess.run(replay(path, srv.endpoint), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "not the same body" in done.stderr and "Traceback" not in done.stderr
    assert not srv.events("command")  # nothing was sent


def test_a_position_robots_setpoint_goes_out_in_the_agents_units():
    """A joint target of 0.5 rad on an arm whose limits are +-pi is the normalized action 0.5 / pi: sent
    as 0.5 it would go out as 0.5 * pi = 1.57 rad."""
    import numpy as np
    from gymnasium import spaces

    from agent.replay_robot import Pose, RobotReplayConfig, _command
    from robot_bridge.client import RemoteRobotEnv

    class PositionArm:  # what _command uses of RemoteRobotEnv, with its unit mapping
        action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        _maps, _middle, _half_span = True, np.zeros(2, np.float32), np.full(2, np.pi, np.float32)
        agent_action = RemoteRobotEnv.agent_action

    pose = Pose(position=[0, 1], velocity=[], continuous=[False, False], action="position")
    action = _command(PositionArm(), pose, {"proprio": np.zeros(2)}, np.array([0.5, -4.0]), RobotReplayConfig())
    assert np.allclose(action, [0.5 / np.pi, -1.0])  # and beyond the limits, clipped to them
