"""Replaying an episode on a robot, through the bridge: `omniloop replay FILE --mode robot --connect ENDPOINT`.

    1. where the robot is now becomes its rest pose;
    2. it moves slowly to the episode's start pose (`ramp_s`), and must get there (`tolerance`);
    3. the recorded actions are sent at the recorded rate: one control period each for an episode
       recorded in simulation (its time is simulated time), and on a robot for as long as the
       recording held each one, holding where the recorded robot held. The server applies every
       limit, as for any command;
    4. at the end, or on Ctrl-C, it moves slowly back to rest, and the session ends.

Moving to a pose needs to know where the joints are in `proprio`: the robot's spec says so in
`extra["pose"]` (docs/bridge-protocol.md). A position-controlled robot is given targets that glide
from where it is to the pose. An effort-controlled one is driven there by a PD law on a setpoint
that glides the same way.

The report says, per replayed step, how far the robot's joints were from where the recording's
were: a robot is not a simulator, and this is how far it is not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from agent.episodes import Episode, EpisodeError

HOLD_AT_POSE_S = 0.3  # the pose is held this long before the replay starts


class RobotReplayError(EpisodeError):
    """An episode that this robot cannot replay, or a pose it did not reach."""


@dataclass
class RobotReplayConfig:
    ramp_s: float = 3.0  # seconds to glide to the start pose, and back to rest
    settle_s: float = 3.0  # more seconds allowed to come within `tolerance` of it
    tolerance: float = 0.05  # the pose is reached when every joint is this close (rad or m) ...
    still: float = 0.1  # ... and, where the robot reports joint velocities, none is faster (rad/s or m/s)
    # effort robots: action per unit of position error, and per unit of joint velocity (the agent's
    # action units). At a 20 Hz control rate more damping makes the loop ring: a sampled PD law
    # needs kd well below kp times the period. The defaults hold the Reach arm to 1e-3 rad.
    kp: float = 2.0
    kd: float = 0.1


@dataclass
class Pose:
    """Where the joints are in proprio (the spec's `extra["pose"]`)."""

    position: list[int]
    velocity: list[int]
    continuous: list[bool]
    action: str  # "position" or "effort"

    @classmethod
    def of(cls, spec) -> Pose:
        layout = spec.extra.get("pose")
        if not isinstance(layout, dict):
            raise RobotReplayError(f"robot {spec.name!r} does not say where its joints are (spec.extra['pose'], "
                                   "docs/bridge-protocol.md): it cannot be moved to a pose")
        position = [int(i) for i in layout.get("position", [])]
        pose = cls(position, [int(i) for i in layout.get("velocity", [])],
                   [bool(c) for c in layout.get("continuous", [False] * len(position))], str(layout.get("action")))
        if len(position) != spec.action_dim or pose.action not in ("position", "effort") \
                or len(pose.continuous) != len(position) or pose.velocity and len(pose.velocity) != len(position):
            raise RobotReplayError(f"robot {spec.name!r}: extra['pose'] is malformed: {layout}")
        return pose

    def joints(self, proprio: np.ndarray) -> np.ndarray:
        return np.asarray(proprio, np.float64)[self.position]

    def error(self, target: np.ndarray, now: np.ndarray) -> np.ndarray:
        """target - now, with free joints' errors wrapped into [-pi, pi]."""
        error = target - now
        wrap = np.asarray(self.continuous)
        error[wrap] = (error[wrap] + math.pi) % (2 * math.pi) - math.pi
        return error


@dataclass
class RobotReplayReport:
    steps: int = 0  # recorded steps replayed
    of: int = 0  # recorded steps in the episode
    stopped: bool = False  # Ctrl-C ended it
    start_error: float = float("nan")  # largest joint error when the replay began
    rest_error: float = float("nan")  # ... when the robot was back at rest
    divergence: list[float] = field(default_factory=list)  # per replayed step: largest joint error
    rate_hz: float = 0.0  # recorded steps per second, as replayed


def replay_on_robot(episode: Episode, env, cfg: RobotReplayConfig,
                    say: Callable[[str], None] = print) -> RobotReplayReport:
    """Move to the start pose, replay, and go back to rest; Ctrl-C skips to the way back."""
    steps = [s for s in episode.steps if s.action_taken is not None and "proprio" in s.observation]
    spec = env.spec_
    pose = Pose.of(spec)
    _check_fits(episode, steps, spec)
    period = spec.period
    report = RobotReplayReport(of=len(steps))
    obs, _ = env.reset(options={"hold": True})  # a fresh observation; a real robot's scene cannot be reset
    rest = pose.joints(obs["proprio"])
    try:
        start = pose.joints(steps[0].observation["proprio"])
        say(f"moving to the episode's start pose over {cfg.ramp_s:g} s")
        obs, report.start_error = _move_to(env, pose, obs, start, cfg)
        if report.start_error > cfg.tolerance:
            raise RobotReplayError(f"the robot did not reach the start pose: a joint is {report.start_error:.3f} "
                                   f"away after {cfg.ramp_s + cfg.settle_s:g} s (tolerance {cfg.tolerance:g})")
        say(f"replaying {len(steps)} steps")
        began = time.monotonic()
        on_robot = episode.metadata.get("env", "").startswith("robot:")
        for i, step in enumerate(steps):
            report.divergence.append(float(np.abs(pose.error(pose.joints(step.observation["proprio"]),
                                                             pose.joints(obs["proprio"]))).max()))
            obs, *_ = env.step(step.action_taken)
            for _ in range(_periods(steps, i, period) - 1 if on_robot else 0):
                if _gap_after(steps, i):  # the recorded robot held here (a stale observation): so does this one
                    obs, _ = env.reset(options={"hold": True})
                else:
                    obs, *_ = env.step(step.action_taken)
            report.steps = i + 1
        report.rate_hz = report.steps / max(time.monotonic() - began, 1e-9)
    except KeyboardInterrupt:
        report.stopped = True
        say(f"stopped at step {report.steps} of {len(steps)}")
    finally:
        say(f"returning to rest over {cfg.ramp_s:g} s")
        try:
            obs, _ = env.reset(options={"hold": True})
            _, report.rest_error = _move_to(env, pose, obs, rest, cfg)
        except KeyboardInterrupt:  # a second Ctrl-C: stop where it is; the server holds, then goes safe
            say("return to rest skipped: the robot holds where it is")
    return report


def _check_fits(episode: Episode, steps, spec) -> None:
    if not steps:
        raise RobotReplayError(f"{episode.path}: no step holds an action and proprio to replay")
    shape = spec.observation.get("proprio")
    recorded = steps[0].observation["proprio"].shape
    if shape is None or tuple(shape.shape) != recorded:
        raise RobotReplayError(f"{episode.path}: its proprio is {list(recorded)}, robot {spec.name!r}'s is "
                               f"{None if shape is None else list(shape.shape)}: not the same body")
    if steps[0].action_taken.shape != (spec.action_dim,):
        raise RobotReplayError(f"{episode.path}: its actions have {steps[0].action_taken.shape[0]} dimensions, "
                               f"robot {spec.name!r}'s {spec.action_dim}")


def _periods(steps, i: int, period: float) -> int:
    """How many control periods of a robot's recording step i lasted: the time to the next step's
    action. (A simulation's step is one period of simulated time, however long the loop took.)"""
    if i + 1 >= len(steps):
        return 1
    return max(1, round((steps[i + 1].action_time_ns - steps[i].action_time_ns) / 1e9 / period))


def _gap_after(steps, i: int) -> bool:
    return i + 1 < len(steps) and steps[i + 1].step != steps[i].step + 1


def _move_to(env, pose: Pose, obs: dict, target: np.ndarray, cfg: RobotReplayConfig) -> tuple[dict, float]:
    """Glide to `target` over ramp_s, then hold it until within tolerance (or settle_s runs out);
    returns the last observation and the largest joint error left."""
    period = env.spec_.period
    start = pose.joints(obs["proprio"])
    path = pose.error(target, start)  # the short way round, for a free joint
    ramp = max(1, round(cfg.ramp_s / period))
    error = np.inf
    still_since = None
    for k in range(ramp + round((cfg.settle_s + HOLD_AT_POSE_S) / period)):
        setpoint = start + path * min(1.0, (k + 1) / ramp)
        obs, *_ = env.step(_command(env, pose, obs, setpoint, cfg))
        error = float(np.abs(pose.error(target, pose.joints(obs["proprio"]))).max())
        speed = float(np.abs(np.asarray(obs["proprio"])[pose.velocity]).max()) if pose.velocity else 0.0
        at_pose = k + 1 >= ramp and error <= cfg.tolerance and speed <= cfg.still
        still_since = (still_since if still_since is not None else k) if at_pose else None
        if still_since is not None and (k - still_since + 1) * period >= HOLD_AT_POSE_S:
            break
    return obs, error


def _command(env, pose: Pose, obs: dict, setpoint: np.ndarray, cfg: RobotReplayConfig) -> np.ndarray:
    """The action that takes the joints towards `setpoint`, within the action space (the agent's units)."""
    space = env.action_space
    if pose.action == "position":  # the setpoint is in the robot's units: radians or metres
        action = env.agent_action(setpoint)
    else:
        now = pose.joints(obs["proprio"])
        velocity = np.asarray(obs["proprio"], np.float64)[pose.velocity] if pose.velocity else 0.0
        action = cfg.kp * pose.error(setpoint, now) - cfg.kd * velocity
    return np.clip(action, space.low, space.high).astype(np.float32)
