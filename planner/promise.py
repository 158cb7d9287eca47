"""Do the search's steps deliver the return the value promised? A Bellman check along the path taken.

MPPI scores a plan by a few imagined rewards and the value where they end, so it climbs whatever the
value says. Where the value is wrong, say a plateau that scores almost as well as the goal, the search
can hold the agent there for a whole episode while every step still looks promising. On reacher-easy
this happened with the target behind the base and the arm folded: all 500 steps scored 0.

The value V(s_t) = Q(s_t, pi(s_t)) promises the return of following System 1's policy pi from s_t.
`window` (W) steps later, the rewards received and the value of the state reached say what the steps
actually taken delivered:

    shortfall = V(s_t) - (r_t + g r_{t+1} + ... + g^(W-1) r_{t+W-1} + g^W V(s_{t+W}))

It stays near 0 when the value is right and the agent does as well as pi. It grows when the agent
does worse than pi, or when the value promises what nothing delivers; in both cases the search's
steps are the ones to doubt. Where nothing at all comes in and the value stays put, the shortfall
is (1 - g^W) V(s_t): the share of the promise that falls due within the window. `broken` says when
the shortfall passes `tolerance` of that share.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

SCALE_RATE = 0.01  # of the running mean |V| that stands in for promises too small to measure against


class PromiseCheck:
    def __init__(self, window: int, discount: float, tolerance: float):
        if window < 1:
            raise ValueError(f"the promise window must be at least 1 step, got {window}")
        self.window = window
        self.tolerance = tolerance
        self.weights = discount ** np.arange(window + 1)  # g^0 .. g^W
        self.values: deque[float] = deque(maxlen=window)
        self.rewards: deque[float] = deque(maxlen=window)
        self.pending: float | None = None
        # A promise of ~0 (early in learning, or far from any reward) would make any noise a breach:
        # promises are measured against at least the running mean of |V| over the whole run.
        self.mean_abs_value: float | None = None

    def reset(self) -> None:
        """Forget the path so far: a new episode, a gap in it, or a new way of acting that should get
        its own trial."""
        self.values.clear()
        self.rewards.clear()
        self.pending = None

    def promised(self, value: float) -> None:
        """The value of the state the next action is taken in (an action the check is to judge). A
        value that is not finite promises nothing: its step starts the window over."""
        if not math.isfinite(value):
            self.pending = None
            return
        self.pending = value
        m = self.mean_abs_value
        self.mean_abs_value = abs(value) if m is None else m + SCALE_RATE * (abs(value) - m)

    def delivered(self, reward: float) -> None:
        """The reward the last action brought. After an action that was not promised on, the path has
        a gap the discounts cannot cross: the window starts over."""
        if self.pending is None:
            self.reset()
            return
        self.values.append(self.pending)
        self.rewards.append(reward)
        self.pending = None

    def shortfall(self, value_now: float) -> float | None:
        """How far the return of the last `window` steps, closed by the value of the state now, falls
        short of the promise made at their start (None until a whole window has been walked)."""
        if len(self.values) < self.window:
            return None
        realized = float(np.dot(self.weights[:-1], self.rewards)) + self.weights[-1] * value_now
        return self.values[0] - realized

    def broken(self, value_now: float) -> bool:
        short = self.shortfall(value_now)
        if short is None:
            return False
        due = (1.0 - self.weights[-1]) * max(abs(self.values[0]), self.mean_abs_value or 0.0)
        return short > self.tolerance * due

    def state(self) -> tuple:
        return list(self.values), list(self.rewards), self.pending, self.mean_abs_value

    def restore(self, state: tuple) -> None:
        values, rewards, self.pending, self.mean_abs_value = state
        self.values.clear()
        self.values.extend(values)
        self.rewards.clear()
        self.rewards.extend(rewards)
