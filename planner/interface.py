"""What the planner may know of a world model: four functions over batched latents.

Any object with these methods can be planned in: the learned `worldmodel.WorldModel`, or a small
hand-written model in a test. Shapes: B batch (the candidates), Z latent size, A action size.
"""

from __future__ import annotations

from typing import Protocol

import torch


class LatentModel(Protocol):
    action_dim: int

    def step(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """(B, Z), (B, A) -> next latent (B, Z)."""
        ...

    def reward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """(B, Z), (B, A) -> reward (B,)."""
        ...

    def value(self, z: torch.Tensor, a: torch.Tensor, every_head: bool = False) -> torch.Tensor:
        """(B, Z), (B, A) -> value of taking a in z and acting well after (B,). It may be a cheap,
        noisy estimate that differs from call to call (a random subset of an ensemble); with
        `every_head`, the same answer each call, for values read at different times to compare."""
        ...

    def policy(self, z: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """(B, Z) -> an action (B, A) in [-1, 1]."""
        ...

    def uncertainty(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """(B, Z), (B, A) -> how unsure the model is of value(z, a), >= 0 (B,)."""
        ...
