"""Does the value the search plans with come true? A Bellman check along the path the agent took.

MPPI scores a plan by a few imagined rewards and the value where they end, so it climbs whatever the
value says. Where the value is wrong, say a plateau that scores almost as well as the goal, the search
can hold the agent there for a whole episode while every step still looks promising. On reacher-easy
this happened with the target behind the base and the arm folded: every one of the 500 steps scored 0.

A value V(s_t) promises a discounted return. `window` steps later, the rewards received and the value
of the state reached say what was delivered:

    shortfall = V(s_t) - (r_t + g r_{t+1} + ... + g^(W-1) r_{t+W-1} + g^W V(s_{t+W}))

A value that is right keeps this near 0 on average, whatever the task's reward scale. One that keeps
promising and never delivers leaves a shortfall of about (1 - g^W) V. `broken` says when the shortfall
passes a share of the promise.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class PromiseCheck:
    def __init__(self, window: int, discount: float, shortfall: float):
        if window < 1:
            raise ValueError(f"the promise window must be at least 1 step, got {window}")
        self.window = window
        self.shortfall = shortfall
        self.weights = discount ** np.arange(window + 1)  # g^0 .. g^W
        self.values: deque[float] = deque(maxlen=window)
        self.rewards: deque[float] = deque(maxlen=window)
        self.pending: float | None = None

    def reset(self) -> None:
        """Forget the path so far: a new episode, or a new way of acting that should get its own trial."""
        self.values.clear()
        self.rewards.clear()
        self.pending = None

    def promised(self, value: float) -> None:
        """The value of the state the next action is taken in."""
        self.pending = value

    def delivered(self, reward: float) -> None:
        """The reward that action brought. A reward without a promise (a random action) is not counted."""
        if self.pending is None:
            return
        self.values.append(self.pending)
        self.rewards.append(reward)
        self.pending = None

    def gap(self, value_now: float) -> float | None:
        """The shortfall of the promise made `window` steps ago, given the value of the state now
        (None until a whole window has been walked)."""
        if len(self.values) < self.window:
            return None
        realized = float(np.dot(self.weights[:-1], self.rewards)) + self.weights[-1] * value_now
        return self.values[0] - realized

    def broken(self, value_now: float) -> bool:
        gap = self.gap(value_now)
        return gap is not None and gap > self.shortfall * abs(self.values[0])

    def state(self) -> tuple:
        return list(self.values), list(self.rewards), self.pending

    def restore(self, state: tuple) -> None:
        values, rewards, self.pending = state
        self.values.clear()
        self.values.extend(values)
        self.rewards.clear()
        self.rewards.extend(rewards)
