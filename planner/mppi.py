"""MPPI in latent space: System 2's search.

Each iteration samples candidate action sequences around a Gaussian (mean, std) over the horizon,
imagines each in the world model, scores it by discounted predicted reward plus the value of where it
ends, and moves the Gaussian toward the softmax-weighted best (the elites). A share of the candidates
are rollouts of the policy prior, so System 1's proposal is always in the running. The search starts
from the previous plan shifted by one step, and starts no iteration that would end past the wall-clock
deadline (judged by the ones so far), returning the best plan found by then. All candidates travel through the model as one batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from planner.config import PlannerConfig
from planner.interface import LatentModel


@dataclass
class PlanTrace:
    """What one decision cost and what it expects."""

    iterations: int  # refinement rounds done before the deadline
    best_return: float  # imagined return of the best candidate seen
    mean_return: float  # mean imagined return of the last round's elites
    think_ms: float  # wall-clock time of the decision
    expected_latent: torch.Tensor  # (Z,) the latent the model expects after the committed action
    expected_reward: float  # the reward the model expects for the committed action
    fast_path: bool = False  # True when System 1's action was taken without search, in a calm moment
    takeover: bool = False  # True when System 1 acted because the search's promises had failed

    def scalars(self) -> dict[str, float | int]:
        return {"iterations": self.iterations, "best_return": self.best_return,
                "mean_return": self.mean_return, "think_ms": self.think_ms,
                "expected_reward": self.expected_reward, "fast_path": int(self.fast_path),
                "takeover": int(self.takeover)}


class MPPI:
    def __init__(self, cfg: PlannerConfig, action_dim: int, generator: torch.Generator | None = None):
        if cfg.elites > cfg.samples:
            raise ValueError(f"planner.elites ({cfg.elites}) cannot exceed planner.samples ({cfg.samples})")
        self.cfg = cfg
        self.action_dim = action_dim
        self.gen = generator
        self.mean: torch.Tensor | None = None  # (H, A) last plan, for the warm start

    def reset(self) -> None:
        """Forget the warm start (a new episode, or a surprise that made the old plan moot)."""
        self.mean = None

    @torch.no_grad()
    def imagine(self, model: LatentModel, z0: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Score candidates. z0 (Z,), actions (N, H, A) -> imagined returns (N,)."""
        n, horizon, _ = actions.shape
        z = z0.expand(n, -1)
        ret = torch.zeros(n, device=z0.device)
        for t in range(horizon):
            ret += self.cfg.discount**t * model.reward(z, actions[:, t])
            z = model.step(z, actions[:, t])
        return ret + self.cfg.discount**horizon * model.value(z, model.policy(z))

    def score(self, model: LatentModel, z0: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """`imagine`, with a candidate whose return is not a number (a NaN in the state) ranked last."""
        return self.imagine(model, z0, actions).nan_to_num(nan=-1e9, posinf=1e9, neginf=-1e9)

    @torch.no_grad()
    def policy_rollouts(self, model: LatentModel, z0: torch.Tensor, n: int) -> torch.Tensor:
        """n action sequences (n, H, A) from running the policy prior in imagination."""
        z = z0.expand(n, -1)
        actions = []
        for _ in range(self.cfg.horizon):
            a = model.policy(z)
            actions.append(a)
            z = model.step(z, a)
        return torch.stack(actions, 1)

    @torch.no_grad()
    def plan(self, model: LatentModel, z0: torch.Tensor, iterations: int | None = None,
             deadline_s: float | None = None, explore: float = 0.0) -> tuple[torch.Tensor, PlanTrace]:
        """z0 (Z,) -> the first action (A,) of the best plan, and the trace.

        `iterations` and `deadline_s` override the config for this decision (deliberation sets them);
        at least one iteration always runs. `explore` > 0 adds that share of the plan's std as noise.
        """
        start = time.perf_counter()
        cfg, dev = self.cfg, z0.device
        horizon, a_dim = cfg.horizon, self.action_dim
        iterations = cfg.iterations if iterations is None else max(1, iterations)
        n_pi = int(cfg.samples * cfg.policy_fraction)
        n_rand = cfg.samples - n_pi
        pi_actions = self.policy_rollouts(model, z0, n_pi) if n_pi else None

        mean = torch.zeros(horizon, a_dim, device=dev)
        if self.mean is not None:
            mean[:-1] = self.mean[1:]
        std = torch.full((horizon, a_dim), cfg.max_std, device=dev)
        best_ret, bests = -float("inf"), []  # each round's best candidate, for the final choice
        done = 0
        for _ in range(iterations):
            noise = torch.randn(n_rand, horizon, a_dim, device=dev, generator=self.gen)
            actions = (mean + std * noise).clamp(-1, 1)
            if pi_actions is not None:
                actions = torch.cat([pi_actions, actions], 0)
            returns = self.score(model, z0, actions)
            elite_ret, idx = returns.topk(cfg.elites)
            elites = actions[idx]
            best_ret = max(best_ret, float(elite_ret[0]))
            bests.append(elites[0])
            w = torch.softmax((elite_ret - elite_ret.max()) / cfg.temperature, 0)[:, None, None]
            mean = (w * elites).sum(0)
            std = ((w * (elites - mean) ** 2).sum(0)).sqrt().clamp(cfg.min_std, cfg.max_std)
            done += 1
            elapsed = time.perf_counter() - start
            if deadline_s is not None and elapsed * (done + 1) / done > deadline_s:
                break  # another iteration, as long as the ones so far, would end past the deadline

        # Commit to the refined mean unless a round's best single sample beats it; either is a warm
        # start. They are scored again, together: a value read from a random pair of Q heads differs
        # from call to call, so scores from different rounds do not compare.
        final = self.score(model, z0, torch.stack([mean, *bests]))
        top = int(final.argmax())
        plan = mean if float(final[0]) >= float(final[top]) - 1e-6 else bests[top - 1]
        self.mean = plan
        action = plan[0]
        if explore > 0:
            action = action + explore * std[0] * torch.randn(a_dim, device=dev, generator=self.gen)
        action = action.clamp(-1, 1)
        z1 = model.step(z0[None], action[None])[0]
        r0 = float(model.reward(z0[None], action[None])[0])
        trace = PlanTrace(done, best_ret, float(elite_ret.mean()), 1e3 * (time.perf_counter() - start), z1, r0)
        return action, trace
