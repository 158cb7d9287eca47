"""System 2, the planner: deliberate within a deadline by searching in the world model's latent space.

`planner/` owns MPPI (`mppi.py`), the deliberation policy that sets its budget and decides when
System 1 may act alone (`deliberation.py`), and the interface it expects of a world model
(`interface.py`: step, reward, value, policy, uncertainty over batched latents).

It may import torch, and sees the world model only through that interface: nothing here imports
worldmodel/, the body or the agent.
"""

from planner.config import DeliberationConfig, PlannerConfig
from planner.deliberation import Deliberation
from planner.interface import LatentModel
from planner.mppi import MPPI, PlanTrace

__all__ = ["MPPI", "Deliberation", "DeliberationConfig", "LatentModel", "PlanTrace", "PlannerConfig"]
