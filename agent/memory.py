"""Replay memory with surprise priorities.

The memory is a ring of time steps. Entry t holds the observation o_t and, unless it is the last
observation of an episode, the action a_t taken in it, the reward r_t and whether the episode
terminated after it. The learner samples sequences of H actions (H+1 observations) that lie inside one
episode; a sequence starting at t is drawn with probability proportional to priority_t ** alpha, where
the priority is the surprise of step t: first as measured while acting, then as re-measured by each
learner step that used it. Importance weights (N * P_t) ** -beta, scaled to a maximum of 1, undo the bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MemoryConfig:
    capacity: int = 100_000  # time steps kept; the oldest are overwritten
    alpha: float = 0.6  # 0 is uniform sampling, 1 is fully proportional to surprise
    beta: float = 0.4  # importance-weight correction
    min_priority: float = 1e-3


class Memory:
    def __init__(self, cfg: MemoryConfig, obs_spec: dict[str, tuple[tuple[int, ...], str]], action_dim: int,
                 horizon: int, seed: int = 0):
        self.cfg = cfg
        self.horizon = horizon
        self.action_dim = action_dim
        n = cfg.capacity
        self.obs = {k: np.zeros((n, *shape), dtype=np.dtype(dtype)) for k, (shape, dtype) in obs_spec.items()}
        self.action = np.zeros((n, action_dim), dtype=np.float32)
        self.reward = np.zeros(n, dtype=np.float32)
        self.terminated = np.zeros(n, dtype=np.float32)
        self.has_action = np.zeros(n, dtype=bool)
        self.episode = np.full(n, -1, dtype=np.int64)
        self.surprise = np.zeros(n, dtype=np.float32)  # surprise of the step that starts at t
        self.priority = np.zeros(n, dtype=np.float64)  # 0 where no full sequence starts
        self.ptr = 0  # next entry to write
        self.size = 0
        self.episodes = 0  # index of the episode being written
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    @property
    def n_sequences(self) -> int:
        """How many sequences can be sampled."""
        return int(np.count_nonzero(self.priority))

    def add(self, obs: dict[str, np.ndarray], action: np.ndarray | None = None, reward: float = 0.0,
            terminated: bool = False, surprise: float | None = None) -> None:
        """Append o_t with the step taken from it; `action=None` closes the episode with its last o."""
        i = self.ptr
        self.priority[[(i - k) % self.cfg.capacity for k in range(self.horizon + 1)]] = 0.0  # overwritten
        for k, buf in self.obs.items():
            buf[i] = obs[k]
        self.has_action[i] = action is not None
        self.action[i] = 0.0 if action is None else action
        self.reward[i] = reward
        self.terminated[i] = float(terminated)
        self.episode[i] = self.episodes
        # unknown, or not a number (a NaN in the step's observation): an ordinary priority, so sampling stays defined
        self.surprise[i] = 1.0 if surprise is None or not np.isfinite(surprise) else surprise
        self.ptr = (i + 1) % self.cfg.capacity
        self.size = min(self.size + 1, self.cfg.capacity)
        self._open_sequence_ending_at(i)
        if action is None:
            self.episodes += 1

    def _open_sequence_ending_at(self, last: int) -> None:
        start = (last - self.horizon) % self.cfg.capacity
        idx = [(start + k) % self.cfg.capacity for k in range(self.horizon + 1)]
        if self.size < self.horizon + 1 or (self.episode[idx] != self.episode[last]).any():
            return
        if self.has_action[idx[:-1]].all():
            self.priority[start] = max(float(self.surprise[start]), self.cfg.min_priority)

    def sample(self, batch_size: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Draw `batch_size` sequence starts. Returns arrays:
        obs: key -> (B, H+1, *shape); action (B, H, A); reward (B, H); terminated (B, H);
        weight (B,); and the start indices (B,) for `update_priorities`."""
        # Only the filled part of the ring can hold an open sequence (raising the whole ring each update
        # cost 2 ms of a 60 ms update while it filled); a closed one stays at 0 even when alpha is 0.
        filled = self.priority[:self.size]
        p = np.where(filled > 0, filled ** self.cfg.alpha, 0.0)
        total = p.sum()
        if total <= 0:
            raise RuntimeError("the memory holds no complete sequence yet: add more steps before sampling")
        p /= total
        starts = self.rng.choice(len(p), size=batch_size, p=p)
        idx = (starts[:, None] + np.arange(self.horizon + 1)) % self.cfg.capacity  # (B, H+1)
        weight = (self.n_sequences * p[starts]) ** -self.cfg.beta
        batch = {
            "obs": {k: buf[idx] for k, buf in self.obs.items()},
            "action": self.action[idx[:, :-1]],
            "reward": self.reward[idx[:, :-1]],
            "terminated": self.terminated[idx[:, :-1]],
            "weight": (weight / weight.max()).astype(np.float32),
        }
        return batch, starts

    def update_priorities(self, starts: np.ndarray, surprise: np.ndarray) -> None:
        # a sequence overwritten since it was drawn stays closed; a non-finite surprise keeps the old priority
        live = (self.priority[starts] > 0) & np.isfinite(surprise)
        self.priority[starts[live]] = np.maximum(surprise[live], self.cfg.min_priority)

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Arrays and counters for a checkpoint (only the filled part of the ring)."""
        n = self.size
        arrays = {f"obs.{k}": v[:n] for k, v in self.obs.items()}
        arrays.update(action=self.action[:n], reward=self.reward[:n], terminated=self.terminated[:n],
                      has_action=self.has_action[:n], episode=self.episode[:n], surprise=self.surprise[:n],
                      priority=self.priority[:n])
        return arrays, {"ptr": self.ptr, "size": self.size, "episodes": self.episodes}

    def load_state(self, arrays: dict[str, np.ndarray], counters: dict[str, int]) -> None:
        """Restore what `state` saved, into a ring of this memory's capacity and horizon, which may differ
        from the saved one's (a run started with --init): the sequences that can be drawn are worked out again."""
        n, ptr = int(counters["size"]), int(counters["ptr"])
        if n > self.cfg.capacity:
            raise ValueError(f"the checkpoint's memory holds {n} steps, more than memory.capacity={self.cfg.capacity}")
        # A ring that wrapped at another capacity is laid out oldest first, so that its steps stay in order here.
        rewrap = n < self.cfg.capacity and 0 < ptr < n
        order = np.roll(np.arange(n), -ptr) if rewrap else np.arange(n)
        for k, v in self.obs.items():
            v[:n] = arrays[f"obs.{k}"][order]
        for name in ("action", "reward", "terminated", "has_action", "episode", "surprise", "priority"):
            getattr(self, name)[:n] = arrays[name][order]
        # a ring with room left writes after its newest step; a full one where the saved head was
        self.ptr = n if n < self.cfg.capacity else ptr % self.cfg.capacity
        self.size, self.episodes = n, int(counters["episodes"])
        self._reopen_sequences()

    def _reopen_sequences(self) -> None:
        """Open exactly the sequences of H actions that lie inside one episode of the filled ring, keeping
        the priorities they had; closes any that the saved ring's horizon or capacity allowed and this one does not."""
        n, cap = self.size, self.cfg.capacity
        idx = (np.arange(n)[:, None] + np.arange(self.horizon + 1)) % cap  # (n, H+1)
        valid = (idx < n).all(1) & (self.episode[idx] == self.episode[idx[:, :1]]).all(1) & self.has_action[idx[:, :-1]].all(1)
        fresh = np.maximum(self.surprise[:n], self.cfg.min_priority)
        kept = self.priority[:n]
        self.priority[:n] = np.where(valid, np.where(kept > 0, kept, fresh), 0.0)
