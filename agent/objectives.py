"""Objectives: where the reward comes from when the body gives none.

A simulated task has its own reward (`kind: env`). A robot has none: the objective in the config
computes it from what the robot observes. `kind: reach` rewards bringing a point of the observation
vector (a fingertip, a gripper) onto a goal, with the same shape as the Reach task's reward: 1
within `radius` of the goal, then falling with the distance beyond it at two scales. The goal is
either fixed (`goal`) or read from the observation (`goal_from`: a tracked target).

    objective:
      kind: reach
      key: proprio
      point: [4, 5]       # fingertip xy in the sim driver's proprio
      goal_from: [6, 7]   # pad xy
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium
import numpy as np


@dataclass
class ObjectiveConfig:
    kind: str = "env"  # env: the body's own reward | reach: bring `point` onto the goal
    key: str = "proprio"  # the observation vector that holds the point (and the goal)
    point: list[int] = field(default_factory=list)  # indices of the point in that vector
    goal: list[float] = field(default_factory=list)  # a fixed goal, in the point's units ...
    goal_from: list[int] = field(default_factory=list)  # ... or the indices of the goal in the vector
    radius: float = 0.025  # success: the point is within this of the goal
    scale: float = 0.15  # the wide term's distance scale: it pulls from far away
    scale_near: float = 0.03  # the near term's: it makes the last stretch worth learning precisely

    def validate(self) -> None:
        if self.kind not in ("env", "reach"):
            raise ValueError(f"objective.kind must be env or reach, got {self.kind!r}")
        if self.kind == "reach":
            if not self.point:
                raise ValueError("objective.point must list the indices of the point to bring to the goal")
            if bool(self.goal) == bool(self.goal_from):
                raise ValueError("objective: give exactly one of goal (a fixed point) and goal_from (indices)")
            n_goal = len(self.goal) or len(self.goal_from)
            if n_goal != len(self.point):
                raise ValueError(f"objective: the goal has {n_goal} coordinates, the point {len(self.point)}")
            if not (self.radius >= 0 and self.scale > 0 and self.scale_near > 0):
                raise ValueError("objective: radius must be >= 0, scale and scale_near > 0")


class ReachObjective:
    def __init__(self, cfg: ObjectiveConfig) -> None:
        self.cfg = cfg
        self.point = np.asarray(cfg.point, dtype=np.int64)
        self.goal = np.asarray(cfg.goal, dtype=np.float64) if cfg.goal else None
        self.goal_from = np.asarray(cfg.goal_from, dtype=np.int64) if cfg.goal_from else None

    def check(self, space: gymnasium.spaces.Dict) -> None:
        """Refuse an observation that lacks the key or the indices, naming them."""
        box = space.spaces.get(self.cfg.key)
        if box is None or len(box.shape) != 1:
            raise ValueError(f"objective.key {self.cfg.key!r} is not a vector of the observation {list(space.spaces)}")
        used = np.concatenate([self.point, self.goal_from if self.goal_from is not None else []]).astype(np.int64)
        if used.size and (used.min() < 0 or used.max() >= box.shape[0]):
            raise ValueError(f"objective indices {used.tolist()} fall outside {self.cfg.key} of size {box.shape[0]}")

    def __call__(self, obs: dict[str, np.ndarray]) -> tuple[float, bool]:
        """(reward, success) for observation `obs`."""
        vector = np.asarray(obs[self.cfg.key], dtype=np.float64)
        goal = self.goal if self.goal is not None else vector[self.goal_from]
        distance = float(np.linalg.norm(vector[self.point] - goal))
        beyond = max(distance - self.cfg.radius, 0.0)
        reward = 1.0 - 0.5 * np.tanh(beyond / self.cfg.scale) - 0.5 * np.tanh(beyond / self.cfg.scale_near)
        return float(reward), distance < self.cfg.radius


class ObjectiveReward(gymnasium.Wrapper):
    """The body's reward replaced by the objective's, computed on the observation after each step.
    `info["success"]` says whether the goal is reached; `info["body_reward"]` keeps the body's own."""

    def __init__(self, env: gymnasium.Env, objective: ReachObjective) -> None:
        super().__init__(env)
        objective.check(env.observation_space)
        self.objective = objective

    def step(self, action: Any):
        obs, body_reward, terminated, truncated, info = self.env.step(action)
        reward, success = self.objective(obs)
        return obs, reward, terminated, truncated, {**info, "success": success, "body_reward": body_reward}


def with_objective(env: gymnasium.Env, cfg: ObjectiveConfig) -> gymnasium.Env:
    """`env` with its reward from the objective; kind `env` keeps the body's own reward."""
    cfg.validate()
    return env if cfg.kind == "env" else ObjectiveReward(env, ReachObjective(cfg))
