"""Options of the body in simulation."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EnvConfig:
    name: str = "reach"  # "reach", "gym:ID" (any Box env) or "dmc:DOMAIN-TASK"
    image_size: int = 64  # side of the square camera image
    pixels: bool = True  # add a rendered camera `image` to the observation
    proprio: bool = True  # false: drop the state vector, so the agent sees only pixels (with pixels=true)
    frame_stack: int = 1  # the image holds the last k frames along its channels (S, S, 3k)
    action_repeat: int = 0  # 0 means the task's default: 2 for dmc:, 1 otherwise (reach takes only 0 or 1)
    episode_length: int = 0  # agent steps per episode; 0 means the task's default (reach: 50)
