"""System 1, the world model: a Mixture-of-Experts transformer over multimodal tokens.

`worldmodel/` owns the tokenizers of each modality (`tokenizers.py`), the MoE layer (`moe.py`), the
model with its heads: encode, step, reward, value, policy, decode (`model.py`), and the learner that
updates it online (`learner.py`).

It may import torch and numpy only. It never imports the body (sim/, robot_bridge/), the planner or
the agent: observations arrive as tensors, described by plain shapes.
"""

from worldmodel.config import LearnerConfig, MoEConfig, WorldModelConfig
from worldmodel.learner import Batch, Learner, surprise
from worldmodel.model import WorldModel

__all__ = ["Batch", "Learner", "LearnerConfig", "MoEConfig", "WorldModel", "WorldModelConfig", "surprise"]
