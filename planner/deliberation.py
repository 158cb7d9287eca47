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
  learning the prior disagrees with the search, so every step is planned;
- System 1 also takes over when the search's steps, taken without exploration noise (as evaluations
  act), keep failing the value's promise (planner/promise.py): when the return of the last
  promise_window searched steps, closed by the value reached, falls short of the value promised at
  their start by more than promise_tolerance of what fell due in that window, the prior acts for the
  next promise_window steps, and then the search gets a fresh trial. The value is the prior's own
  (Q of the prior's action), so the search doing far worse than it promises is the search doing
  worse than the prior would; and a search that looks a few steps ahead can sit on a plateau of the
  value that the prior, trained on the value's slope in every state it met, walks off.
The wall-clock deadline always holds: the search returns its best plan when it runs out.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator

import torch

from planner.config import DeliberationConfig
from planner.interface import LatentModel
from planner.mppi import MPPI, PlanTrace
from planner.promise import PromiseCheck


class Deliberation:
    def __init__(self, cfg: DeliberationConfig, mppi: MPPI, value_discount: float):
        """`value_discount` is the one the value was trained with (the learner's)."""
        self.cfg = cfg
        self.mppi = mppi
        self.promise = (PromiseCheck(cfg.promise_window, value_discount, cfg.promise_tolerance)
                        if cfg.promise_window else None)
        self.takeover_left = 0  # steps System 1 still acts for, after the search's promises failed
        self.surprise_mean: float | None = None
        self.uncertainty_mean: float | None = None
        self.relative_surprise = 1.0
        self.agreement: float | None = None  # running mean |System 1's action - System 2's choice|

    @contextlib.contextmanager
    def aside(self) -> Iterator[None]:
        """Decide inside this block without changing what the running means, warm start and the
        search's random draws will be after it (an evaluation between training episodes)."""
        kept = (self.surprise_mean, self.uncertainty_mean, self.relative_surprise, self.agreement, self.mppi.mean,
                self.takeover_left)
        promise = self.promise.state() if self.promise else None
        draws = self.mppi.gen.get_state() if self.mppi.gen is not None else None
        try:
            yield
        finally:
            (self.surprise_mean, self.uncertainty_mean, self.relative_surprise, self.agreement, self.mppi.mean,
             self.takeover_left) = kept
            if self.promise:
                self.promise.restore(promise)
            if draws is not None:
                self.mppi.gen.set_state(draws)

    def new_episode(self) -> None:
        self.mppi.reset()
        self.relative_surprise = 1.0
        self.takeover_left = 0
        if self.promise:
            self.promise.reset()

    def rewarded(self, reward: float) -> None:
        """Report the reward the last action brought (it settles that step's promise)."""
        if self.promise:
            self.promise.delivered(reward)

    def interrupted(self) -> None:
        """The episode went on without the agent for a while (a robot held on a stale observation):
        neither the warm-started plan nor the promises made before it follow from where it is now."""
        self.mppi.reset()
        if self.promise:
            self.promise.reset()

    def _ema(self, mean: float | None, sample: float) -> float | None:
        """The running mean with `sample` in it. A non-finite sample (a NaN in an observation) is left out:
        once in, it would stay in the mean for good and switch the budget, replanning and fast path off."""
        if not math.isfinite(sample):
            return mean
        return sample if mean is None else mean + self.cfg.surprise_ema * (sample - mean)

    def observe(self, surprise: float) -> bool:
        """Report the last step's surprise; returns True when it dropped the warm start."""
        if not math.isfinite(surprise):  # the model could not say how far off it was: search afresh
            self.relative_surprise = self.cfg.think_max
            self.mppi.reset()
            return True
        mean = self.surprise_mean if self.surprise_mean is not None else surprise
        self.relative_surprise = surprise / max(mean, 1e-8)
        self.surprise_mean = self._ema(self.surprise_mean, surprise)
        if self.relative_surprise > self.cfg.replan_surprise:
            self.mppi.reset()
            return True
        return False

    @torch.no_grad()
    def decide(self, model: LatentModel, z0: torch.Tensor, explore: bool) -> tuple[torch.Tensor, PlanTrace]:
        """z0 (Z,) -> action (A,) and its trace."""
        start = time.perf_counter()
        prior = model.policy(z0[None], deterministic=True)
        # every head: a promise is judged by a value read steps later, and a random pair of heads
        # for each would add their disagreement to the shortfall
        value = (float(model.value(z0[None], prior, every_head=True)[0]) if self.promise or self.cfg.fast_path
                 else float("nan"))
        unsure = float(model.uncertainty(z0[None], prior)[0])
        mean_u = self.uncertainty_mean if self.uncertainty_mean is not None else unsure
        self.uncertainty_mean = self._ema(self.uncertainty_mean, unsure)
        relative_unsure = unsure / max(mean_u, 1e-8) if math.isfinite(unsure) else self.cfg.think_max

        cfg = self.cfg
        # The check judges steps taken without exploration only: noise makes the return fall short of
        # the prior's value by itself (and, while learning, shakes a stuck search loose anyway).
        judged = self.promise is not None and not explore
        if judged and self.takeover_left == 0 and self.promise.broken(value):
            self.takeover_left = cfg.promise_window
        if self.takeover_left:
            # nothing is promised on System 1's steps (so the search's next trial starts afresh)
            self.takeover_left -= 1
            return prior[0], self._system_one(model, z0, prior[0], value, start, takeover=True)

        earned = self.agreement is not None and self.agreement < cfg.fast_agreement
        if cfg.fast_path and earned and self.relative_surprise < cfg.fast_surprise and unsure < cfg.fast_uncertainty:
            # System 1's own best guess: its sampled actions are for exploring, and exploring is
            # what a calm, confident step does not need (noise there knocks a held pose off target).
            return prior[0], self._system_one(model, z0, prior[0], value, start, takeover=False)

        if judged:
            self.promise.promised(value)  # on the search's steps only: the check judges the search
        scale = min(cfg.think_max, max(cfg.think_min, max(self.relative_surprise, relative_unsure)))
        iterations = max(1, round(self.mppi.cfg.iterations * scale))
        remaining = cfg.deadline_s - (time.perf_counter() - start)
        action, trace = self.mppi.plan(model, z0, iterations, remaining, cfg.explore if explore else 0.0)
        gap = float((prior[0] - self.mppi.mean[0]).abs().mean())  # the search's choice, before any noise
        self.agreement = self._ema(self.agreement, gap)
        trace.think_ms = 1e3 * (time.perf_counter() - start)
        return action, trace

    def _system_one(self, model: LatentModel, z0: torch.Tensor, action: torch.Tensor, value: float, start: float,
                    takeover: bool) -> PlanTrace:
        """The trace of a step System 1 took alone; the search's plan no longer follows what was done."""
        self.mppi.reset()
        z1 = model.step(z0[None], action[None])[0]
        r0 = float(model.reward(z0[None], action[None])[0])
        return PlanTrace(0, value, value, 1e3 * (time.perf_counter() - start), z1, r0,
                         fast_path=not takeover, takeover=takeover)
