"""Evaluation: run whole episodes without exploration or learning, and report return and success.

The same protocol measures the agent and a uniformly random policy, so the two can be set side by
side. Evaluation episodes draw their starts from a seed range that training never uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from agent.brain import Brain

EVAL_SEED_OFFSET = 1_000_000_007  # far from the training episodes' seeds


@dataclass
class Evaluation:
    episodes: int
    mean_return: float
    std_return: float
    success_rate: float | None  # None when the task reports no success
    steps_per_s: float
    returns: tuple[float, ...] = ()  # of each episode, in order

    def row(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}return": self.mean_return, f"{prefix}return_std": self.std_return,
               f"{prefix}steps_per_s": self.steps_per_s}
        if self.success_rate is not None:
            out[f"{prefix}success"] = self.success_rate
        return out


def run_episodes(env, policy: Callable[[dict], np.ndarray], episodes: int, seed: int,
                 reset: Callable[[], None] = lambda: None,
                 stepped: Callable[[dict, float], None] = lambda obs, reward: None, first: int = 0) -> Evaluation:
    """Play `episodes` episodes with `policy` (observation -> action) from evaluation starts `first`,
    `first` + 1, ...; success is the last step's. `reset` runs at each episode's start, `stepped` gets
    each step's new observation and reward."""
    returns, successes, steps, start = [], [], 0, time.perf_counter()
    for i in range(first, first + episodes):
        obs, _ = env.reset(seed=EVAL_SEED_OFFSET + seed * 10_007 + i)
        reset()
        ret, done, info = 0.0, False, {}
        while not done:
            obs, reward, terminated, truncated, info = env.step(policy(obs))
            stepped(obs, float(reward))
            ret += float(reward)
            steps += 1
            done = terminated or truncated
        returns.append(ret)
        if "success" in info:
            successes.append(float(info["success"]))
    elapsed = time.perf_counter() - start
    return Evaluation(episodes, float(np.mean(returns)), float(np.std(returns)),
                      float(np.mean(successes)) if successes else None, steps / max(elapsed, 1e-9), tuple(returns))


def evaluate_agent(env, brain: Brain, episodes: int, seed: int = 0, first: int = 0) -> Evaluation:
    """The agent plans as it does while learning, but commits to its plan without exploration noise,
    and so its search is judged by the promise check (planner/promise.py), which learning skips.
    Its surprise at each step steers how long it thinks and when it replans, as in training. Nothing
    is learned, and the deliberation's running state and every random stream the agent draws from
    are as they were afterwards, so training goes on as if the evaluation had not happened: a run
    trains the same whatever its evaluation schedule."""
    last: dict = {}  # the step just taken, then the latent of what it led to

    def policy(obs: dict) -> np.ndarray:
        z = last.pop("z_next", None)
        if z is None:  # an episode's first observation
            z = brain.encode(brain.prepare(obs))
        last["step"] = brain.act(z, explore=False)
        return last["step"].action

    def stepped(obs: dict, reward: float) -> None:
        last["z_next"] = brain.encode(brain.prepare(obs))
        brain.deliberation.observe(brain.surprise(last["step"], last["z_next"], reward)["total"])
        brain.deliberation.rewarded(reward)

    def reset() -> None:
        last.clear()
        brain.deliberation.new_episode()

    # the policy prior samples from torch's global stream, which the learner shares
    cuda = [] if brain.device.type != "cuda" else [
        torch.cuda.current_device() if brain.device.index is None else brain.device.index]
    with torch.random.fork_rng(devices=cuda), brain.deliberation.aside():
        return run_episodes(env, policy, episodes, seed, reset=reset, stepped=stepped, first=first)


def evaluate_random(env, episodes: int, seed: int = 0) -> Evaluation:
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high

    def policy(obs: dict) -> np.ndarray:
        return rng.uniform(low, high).astype(np.float32)

    return run_episodes(env, policy, episodes, seed)
