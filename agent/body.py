"""The body the loop drives: a simulated task, or a robot behind the bridge.

Both are Gymnasium envs with the same observation dict, and both get the same observation options
(`env.proprio`, `env.frame_stack`) and the same objective; this is the one place that knows which
body it is. A robot gives no reward, so it needs an objective, and its control rate bounds how long
the planner may think.
"""

from __future__ import annotations

import gymnasium

import sim
from agent.config import Config, ConfigError
from agent.objectives import with_objective
from robot_bridge.client import RemoteRobotEnv

BODIES = ("sim", "robot")


def make_body(cfg: Config, body: str, clear_fault: bool = False) -> tuple[gymnasium.Env, str]:
    """(env, a name for episode files) for `body` "sim" or "robot"; `clear_fault` lets the robot be
    re-armed over a latched fault, once."""
    if body == "sim":
        try:
            env = sim.make(cfg.env, seed=cfg.run.seed)
        except ValueError as exc:
            raise ConfigError(f"env.name: {exc}") from None
        name = cfg.env.name
    elif body == "robot":
        if cfg.objective.kind == "env":
            raise ConfigError("a robot gives no reward: set objective.kind (e.g. reach) in the config")
        env = RemoteRobotEnv(cfg.bridge, clear_fault=clear_fault)
        name = f"robot:{env.spec_.name}@{cfg.bridge.connect}"
        image = env.spec_.observation.get("image")
        try:
            if image is not None and image.shape[:2] != (cfg.env.image_size, cfg.env.image_size):
                raise ValueError(f"the robot's image is {list(image.shape)}, env.image_size is {cfg.env.image_size}")
            if not cfg.env.proprio:
                env = sim.DropKeys(env, ("proprio",))
            if cfg.env.frame_stack != 1:
                env = sim.StackFrames(env, cfg.env.frame_stack)
        except ValueError as exc:
            env.close()
            raise ConfigError(f"env options do not fit the robot: {exc}") from None
    else:
        raise ValueError(f"body must be one of {BODIES}, got {body!r}")
    try:
        return with_objective(env, cfg.objective), name
    except ValueError as exc:
        env.close()
        raise ConfigError(str(exc)) from None


def fit_deadline(cfg: Config, control_period: float) -> float:
    """A robot waits for nobody: the planner's deadline shrinks to a share of its control period."""
    cfg.deliberation.deadline_s = min(cfg.deliberation.deadline_s, cfg.bridge.think_fraction * control_period)
    return cfg.deliberation.deadline_s
