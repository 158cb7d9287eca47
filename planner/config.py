"""Options of System 2: the MPPI search and the deliberation policy that budgets it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PlannerConfig:
    horizon: int = 3  # imagined steps per candidate
    samples: int = 256  # candidate action sequences per iteration
    iterations: int = 6  # refinement rounds, when the deadline allows
    elites: int = 32  # best candidates that set the next sampling distribution
    # softmax temperature over elite returns: weights exp((G - G_max) / temperature). TD-MPC2's
    # `temperature` multiplies instead, so this 0.5 weighs elites as its 2.0 would (all our runs used it)
    temperature: float = 0.5
    policy_fraction: float = 0.1  # share of candidates that are rollouts of the policy prior
    min_std: float = 0.05
    max_std: float = 2.0
    discount: float = 0.9  # of imagined rewards; the value head closes the horizon


@dataclass
class DeliberationConfig:
    deadline_s: float = 0.25  # wall-clock budget of one decision; the best plan so far is returned
    explore: float = 1.0  # while learning, noise of this many times the plan's own std is added to the action
    surprise_ema: float = 0.02  # rate of the running means (surprise, disagreement, agreement)
    think_min: float = 0.5  # the iteration budget scales with relative surprise, within [think_min, think_max]
    think_max: float = 2.0
    replan_surprise: float = 3.0  # a step this many times more surprising than usual drops the warm start
    fast_path: bool = True  # act on System 1's policy when it has earned it and the moment is calm
    fast_agreement: float = 0.1  # earned: System 1's proposals lately within this of System 2's choices
    fast_surprise: float = 0.5  # calm: relative surprise below this ...
    fast_uncertainty: float = 0.02  # ... and Q-ensemble disagreement (relative std) below this
    promise_window: int = 10  # unexplored searched steps before a promise is checked (~1/(1-g)); 0: never
    promise_tolerance: float = 0.5  # a return short by more than this share of what fell due: System 1 acts a window
