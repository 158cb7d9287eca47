"""Observation wrappers every task can take: drop the state vector, stack camera frames.

With `proprio` dropped and frames stacked, an agent sees what TD-MPC2's pixel agents see: the last
k 64x64 frames and nothing else, so velocities must be read from how the picture moves.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces


class DropKeys(gymnasium.ObservationWrapper):
    """Remove keys from a Dict observation."""

    def __init__(self, env: gymnasium.Env, keys: tuple[str, ...]):
        super().__init__(env)
        kept = {k: v for k, v in env.observation_space.spaces.items() if k not in keys}
        if not kept:
            raise ValueError(f"dropping {list(keys)} would leave the observation empty")
        self.keys = keys
        self.observation_space = spaces.Dict(kept)

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in observation.items() if k not in self.keys}


class StackFrames(gymnasium.Wrapper):
    """`image` becomes the last k frames along the channel axis, (S, S, 3k) with the newest last.
    A new episode starts with its first frame repeated k times."""

    def __init__(self, env: gymnasium.Env, k: int):
        super().__init__(env)
        space = env.observation_space.spaces.get("image")
        if space is None or len(space.shape) != 3:
            raise ValueError(f"frame stacking needs an (S, S, C) image in the observation, got {env.observation_space}")
        if k < 1:
            raise ValueError(f"frame_stack must be >= 1, got {k}")
        self.k = k
        self.frames: deque[np.ndarray] = deque(maxlen=k)
        h, w, c = space.shape
        self.observation_space = spaces.Dict({**env.observation_space.spaces,
                                              "image": spaces.Box(0, 255, (h, w, c * k), np.uint8)})

    def reset(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self.frames.extend([obs["image"]] * self.k)
        return self._stacked(obs), info

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.frames.append(obs["image"])
        return self._stacked(obs), reward, terminated, truncated, info

    def _stacked(self, obs: dict[str, Any]) -> dict[str, Any]:
        return {**obs, "image": np.concatenate(self.frames, axis=-1)}


def newest_frame(image: np.ndarray) -> np.ndarray:
    """The newest (S, S, 3) frame of a stacked (S, S, 3k) image (the image itself when k = 1)."""
    return image[..., -3:]
