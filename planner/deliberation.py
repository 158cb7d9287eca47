"""How long System 2 thinks, and when System 1 is trusted on its own.

After every step the agent reports the surprise it measured. The deliberation keeps running means of
surprise and of the value ensemble's disagreement, and compares each new step to them:
- relative surprise or disagreement above 1 scales the MPPI iteration budget up (to think_max);
  a calm, well-known state scales it down (to think_min);
- a step far more surprising than usual (replan_surprise) drops the warm-started plan: the future it
  was built for did not happen;
- System 1 acts alone (the policy prior's mean action, no search, no noise) only when it has earned
  it and the moment is calm: its own proposals have lately matched what the search chose (a running
  mean of the action gap below fast_agreement), and surprise and disagreement are both low. Early in
  learning the prior disagrees with the search, so every step is planned.
The wall-clock deadline always holds: the search returns its best plan when it runs out.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch

from planner.config import DeliberationConfig
from planner.interface import LatentModel
from planner.mppi import MPPI, PlanTrace


class Deliberation:
    def __init__(self, cfg: DeliberationConfig, mppi: MPPI):
        self.cfg = cfg
        self.mppi = mppi
        self.surprise_mean: float | None = None
        self.uncertainty_mean: float | None = None
        self.relative_surprise = 1.0
        self.agreement: float | None = None  # running mean |System 1's action - System 2's choice|

    @contextlib.contextmanager
    def aside(self) -> Iterator[None]:
        """Decide inside this block without changing what the running means and warm start will be
        after it (an evaluation between training episodes)."""
        kept = (self.surprise_mean, self.uncertainty_mean, self.relative_surprise, self.agreement, self.mppi.mean)
        try:
            yield
        finally:
            self.surprise_mean, self.uncertainty_mean, self.relative_surprise, self.agreement, self.mppi.mean = kept

    def new_episode(self) -> None:
        self.mppi.reset()
        self.relative_surprise = 1.0

    def observe(self, surprise: float) -> bool:
        """Report the last step's surprise; returns True when it dropped the warm start."""
        mean = self.surprise_mean if self.surprise_mean is not None else surprise
        self.relative_surprise = surprise / max(mean, 1e-8)
        self.surprise_mean = mean + self.cfg.surprise_ema * (surprise - mean)
        if self.relative_surprise > self.cfg.replan_surprise:
            self.mppi.reset()
            return True
        return False

    @torch.no_grad()
    def decide(self, model: LatentModel, z0: torch.Tensor, explore: bool) -> tuple[torch.Tensor, PlanTrace]:
        """z0 (Z,) -> action (A,) and its trace."""
        start = time.perf_counter()
        prior = model.policy(z0[None], deterministic=True)
        unsure = float(model.uncertainty(z0[None], prior)[0])
        mean_u = self.uncertainty_mean if self.uncertainty_mean is not None else unsure
        self.uncertainty_mean = mean_u + self.cfg.surprise_ema * (unsure - mean_u)
        relative_unsure = unsure / max(mean_u, 1e-8)

        cfg = self.cfg
        earned = self.agreement is not None and self.agreement < cfg.fast_agreement
        if cfg.fast_path and earned and self.relative_surprise < cfg.fast_surprise and unsure < cfg.fast_uncertainty:
            # System 1's own best guess: its sampled actions are for exploring, and exploring is
            # what a calm, confident step does not need (noise there knocks a held pose off target).
            action = prior[0]
            self.mppi.reset()  # the search's plan no longer follows what was done
            z1 = model.step(z0[None], action[None])[0]
            r0 = float(model.reward(z0[None], action[None])[0])
            value = float(model.value(z0[None], action[None])[0])
            return action, PlanTrace(0, value, value, 1e3 * (time.perf_counter() - start), z1, r0, True)

        scale = min(cfg.think_max, max(cfg.think_min, max(self.relative_surprise, relative_unsure)))
        iterations = max(1, round(self.mppi.cfg.iterations * scale))
        remaining = cfg.deadline_s - (time.perf_counter() - start)
        action, trace = self.mppi.plan(model, z0, iterations, remaining, cfg.explore if explore else 0.0)
        gap = float((prior[0] - self.mppi.mean[0]).abs().mean())  # the search's choice, before any noise
        self.agreement = gap if self.agreement is None else self.agreement + cfg.surprise_ema * (gap - self.agreement)
        trace.think_ms = 1e3 * (time.perf_counter() - start)
        return action, trace
