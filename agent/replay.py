"""Replaying a recorded episode in simulation: by its states, and by its actions.

* `states`: every step's recorded MuJoCo state is set, the scene is rendered again, and the
  observation is compared with the recorded one. PNG is lossless and proprio is written exactly, so
  for a simulated body the largest difference must be zero: anything else means the episode, the
  model file or the renderer changed.
* `actions`: the body starts where the episode started (its recorded start state, or a reset with
  the episode's seed where the body has no settable state) and the recorded actions are applied open
  loop. How far the replay drifts from the recording, step by step, shows how deterministic the
  body is, and where a recording and its code parted ways.

The body is rebuilt from the episode itself: the resolved config attached to the file, and the env
named in its metadata. `agent/replay_video.py` renders an episode to video; robot replay lives with
the bridge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import yaml

import sim
from agent.config import Config, ConfigError, from_dict, parse_override, set_dotted
from agent.episodes import Episode, EpisodeError, StepRecord, stretches

EXACT = 0.0  # the states replay's tolerance: it must reproduce the recording bit for bit


class ReplayError(EpisodeError):
    """An episode that cannot be replayed this way (no simulator state, a robot's episode, ...)."""


@dataclass
class StepDifference:
    step: int
    image: float | None  # largest absolute difference of a pixel (0..255); None without images
    proprio: float | None  # largest absolute difference of a proprio value; None without proprio
    qpos: float | None = None  # actions replay: largest joint position difference; None without states
    reward: float | None = None  # actions replay: |replayed - recorded| reward


@dataclass
class ReplayReport:
    mode: str
    steps: list[StepDifference] = field(default_factory=list)
    stopped_at: int | None = None  # actions replay: the step after a gap the body could not be set to

    def largest(self, name: str) -> float | None:
        values = [getattr(s, name) for s in self.steps if getattr(s, name) is not None]
        return max(values) if values else None

    def first_divergence(self, tolerance: float = 1e-5) -> int | None:
        """The first step where any difference exceeds `tolerance`; None if none does."""
        for s in self.steps:
            if any(v is not None and v > tolerance for v in (s.image, s.proprio, s.qpos, s.reward)):
                return s.step
        return None


def episode_config(episode: Episode, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The run's resolved config, from the file's `config.yaml` attachment, with `key=value` overrides."""
    where = episode.path or "episode"
    text = episode.attachments.get("config.yaml")
    if text is None:
        raise ReplayError(f"{where}: no config.yaml attachment, so the body it ran cannot be rebuilt")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ReplayError(f"{where}: its config.yaml attachment is not YAML: {exc}") from None
    try:
        cfg = from_dict(Config, data)
    except ConfigError as exc:
        raise ReplayError(f"{where}: its config.yaml attachment does not load here: {exc}") from None
    if not overrides:
        return cfg
    for item in overrides:
        set_dotted(data, *parse_override(item))
    return from_dict(Config, data)  # a bad override is the caller's ConfigError, not the file's


def simulated_body(episode: Episode):
    """The env the episode ran in, as the loop built it; refuses a robot's episode."""
    env_name = episode.metadata.get("env", "")
    if env_name.startswith("robot:"):
        raise ReplayError(f"{episode.path}: recorded on a robot ({env_name}); replay it on one with --mode robot")
    cfg = episode_config(episode)
    try:
        env = sim.make(cfg.env, seed=cfg.run.seed)
    except ValueError as exc:
        raise ReplayError(f"{episode.path}: its env {cfg.env.name!r} cannot be built here: {exc}") from None
    recorded_image = bool(episode.steps) and "image" in episode.steps[0].observation
    if recorded_image and "image" not in env.observation_space.spaces:
        env.close()
        # reach ran with images whatever env.pixels said before it honoured the option (e705767)
        raise ReplayError(f"{episode.path}: it recorded camera images, but its config (env.pixels="
                          f"{str(cfg.env.pixels).lower()}) builds a body without them: nothing to compare the images with")
    return env, cfg


def replay_states(episode: Episode) -> ReplayReport:
    """Set each recorded state, render, and compare with the recorded observation."""
    states = [s for s in episode.steps if s.sim_state is not None]
    if not states:
        raise ReplayError(f"{episode.path}: no step holds a simulator state (its body, "
                          f"{episode.metadata.get('env')}, does not expose one): replay it with --mode actions")
    env, _ = simulated_body(episode)
    try:
        body = env.unwrapped
        if not callable(getattr(body, "set_state", None)) or not callable(getattr(body, "observe", None)):
            raise ReplayError(f"{episode.path}: its body, {episode.metadata.get('env')}, records its MuJoCo state but "
                              "cannot restore a scene from it (its task's randomization lives outside the state): "
                              "replay it with --mode actions")
        env.reset(seed=0)  # renderers and buffers exist before the first state is set
        report = ReplayReport("states")
        for step in states:
            body.set_state(step.sim_state)
            report.steps.append(_difference(step.step, body.observe(), step))
        return report
    finally:
        env.close()


def replay_actions(episode: Episode) -> ReplayReport:
    """Apply the recorded actions open loop from the episode's start; compare each step's outcome
    (the last action's with the episode's final observation). Where the file has a gap (steps it
    lacks), the replay starts again from the recorded state after it, if the body can set one, and
    stops there otherwise: the actions in between are unknown."""
    found = stretches(episode)
    if not found:
        raise ReplayError(f"{episode.path}: no step with an action and a recorded outcome to replay")
    env, _ = simulated_body(episode)
    try:
        obs, _ = env.reset(seed=int(episode.metadata["seed"]))
        body = env.unwrapped
        can_set = callable(getattr(body, "set_state", None))
        report = ReplayReport("actions")
        for k, (stretch, after) in enumerate(found):
            start = stretch[0].sim_state
            if start is not None and can_set:
                body.set_state(start)  # exactly where the recording (re)starts, solver warm start included
                obs = _observe(env, obs)
            elif k:
                report.stopped_at = stretch[0].step  # the body cannot be put where the file picks up again
                break
            report.steps.append(_difference(stretch[0].step, obs, stretch[0], body))
            for now, outcome in zip(stretch, [*stretch[1:], after]):
                obs, reward, _, _, _ = env.step(now.action_taken)
                diff = _difference(outcome.step, obs, outcome, body)
                diff.reward = None if now.reward is None else abs(float(reward) - now.reward)
                report.steps.append(diff)
        return report
    finally:
        env.close()


def _observe(env, obs: dict) -> dict:
    """The observation after a set_state, through the wrappers' keys (frame stacks keep their last frame)."""
    fresh = env.unwrapped.observe()
    return {k: fresh[k] if k in fresh else v for k, v in obs.items()}


def _difference(index: int, obs: dict, recorded: StepRecord, body=None) -> StepDifference:
    image = proprio = qpos = None
    if "image" in recorded.observation and "image" in obs:
        replayed = sim.newest_frame(obs["image"]).astype(np.int16)
        image = float(np.abs(replayed - recorded.observation["image"].astype(np.int16)).max())
    if "proprio" in recorded.observation and "proprio" in obs:
        proprio = float(np.abs(np.asarray(obs["proprio"], np.float64) - recorded.observation["proprio"]).max())
    get_state = getattr(body, "get_state", None)
    if recorded.sim_state is not None and callable(get_state):
        qpos = float(np.abs(get_state()["qpos"] - recorded.sim_state["qpos"]).max())
    return StepDifference(index, image, proprio, qpos)
