"""The learner: one gradient step of the world model on a batch of short sequences.

Losses (TD-MPC2's recipe, plus the pieces a multimodal MoE model needs):
- consistency: the latent rollout step(z_t, a_t) must land on encode(o_{t+1}) (target without grad);
- reward: predicted reward of each step against the observed one;
- value: every Q head against r_t + discount * Q_target(z_{t+1}, pi(z_{t+1})) (min of two random heads);
- reconstruction: decode(z_0) against the camera image, so imagined latents can be shown;
- balance: the MoE layers' load-balancing loss;
- policy: the prior maximizes Q at its own action, with an entropy bonus (on detached latents).
Per-step losses decay by rho^t along the rollout. Each sample is weighted by its importance weight
from prioritized replay, and the step returns each sample's surprise to become its new priority.

Health: a loss or gradient that is NaN or inf is not applied. The step is skipped and counted, a
warning is logged, and the weights, optimizer states and Q scale go back to the last snapshot: taken
when the learner starts, then after every `snapshot_every`-th update that went through cleanly
(with all weights finite), so weights that drifted toward a blow-up since then are dropped too. The
returned priority is then None: the samples keep theirs.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from worldmodel.config import LearnerConfig
from worldmodel.model import WorldModel


@dataclass
class Batch:
    """B sequences of H steps. obs values are (B, H+1, *shape); the rest are (B, H) unless stated."""

    obs: dict[str, torch.Tensor]
    action: torch.Tensor  # (B, H, A)
    reward: torch.Tensor  # (B, H)
    terminated: torch.Tensor  # (B, H) float, 1 where the step ended the episode for good
    weight: torch.Tensor  # (B,) importance weights


def surprise(expected: torch.Tensor, observed: torch.Tensor, reward_pred: torch.Tensor,
             reward: torch.Tensor) -> dict[str, torch.Tensor]:
    """How wrong the model was about one step. (B, Z), (B, Z), (B,), (B,) -> parts, each (B,).

    latent: squared error of the predicted next latent, relative to the observed latent's own size
    (so it reads the same across latent sizes); reward: absolute reward error; total: their sum.
    """
    latent = (expected - observed).pow(2).sum(-1) / observed.pow(2).sum(-1).clamp_min(1e-8)
    reward_err = (reward_pred - reward).abs()
    return {"total": latent + reward_err, "latent": latent, "reward": reward_err}


def n_step_targets(reward: torch.Tensor, terminated: torch.Tensor, q_next: torch.Tensor, discount: float,
                   n: int) -> torch.Tensor:
    """TD targets (B, H) for each step t of a sampled window: up to n rewards r_t .. r_{t+n-1}, then the
    value q_next[t+n-1] of the state they lead to, all discounted; the window's end shortens n, and a
    termination cuts everything after it. n = 1 is the one-step target r_t + discount * q_next[t].
    reward, terminated, q_next: (B, H), q_next[:, s] the value after the window's action s."""
    b, h = reward.shape
    alive = 1.0 - terminated
    targets = []
    for t in range(h):
        ret, scale = torch.zeros(b, device=reward.device), torch.ones(b, device=reward.device)
        for k in range(min(n, h - t)):
            ret = ret + scale * reward[:, t + k]
            scale = scale * discount * alive[:, t + k]
        targets.append(ret + scale * q_next[:, t + k])
    return torch.stack(targets, 1)


class Learner:
    def __init__(self, model: WorldModel, cfg: LearnerConfig):
        self.model = model
        self.cfg = cfg
        encoder = list(model.encoder.parameters())
        enc_ids = {id(p) for p in encoder}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in enc_ids]
        policy_ids = {id(p) for p in model.policy_head.parameters()}
        self.world_params = encoder + [p for p in rest if id(p) not in policy_ids]
        self.optim = torch.optim.Adam(fused=True, params=[
            {"params": encoder, "lr": cfg.lr * cfg.encoder_lr_scale},
            {"params": self.world_params[len(encoder):], "lr": cfg.lr},
        ])
        self.pi_optim = torch.optim.Adam(model.policy_head.parameters(), lr=cfg.lr, eps=1e-5, fused=True)
        self.q_scale = 1.0  # running scale of Q, so the policy loss is scale-free across tasks
        self.updates = 0
        self.skipped = 0  # updates refused for a non-finite loss or gradient
        self.restored = 0  # times the last good weights were put back
        self.good: dict | None = None  # the last snapshot whose weights were all finite

    # -- health ----------------------------------------------------------------------------------
    def snapshot(self) -> None:
        """Remember the weights and optimizer states, if every weight and buffer (the input statistics) is finite."""
        tensors = [t.detach() for t in self.model.state_dict().values() if t.is_floating_point() and t.numel()]
        if not bool(torch.isfinite(torch.stack([t.abs().max() for t in tensors])).all()):
            return
        self.good = copy.deepcopy({"model": self.model.state_dict(), "optim": self.optim.state_dict(),
                                   "pi_optim": self.pi_optim.state_dict(), "q_scale": self.q_scale})

    def recover(self, what: str) -> dict[str, float | torch.Tensor]:
        """A non-finite loss or gradient: apply nothing and put the last good weights back."""
        self.skipped += 1
        self.optim.zero_grad(set_to_none=True)
        self.pi_optim.zero_grad(set_to_none=True)
        if self.good is not None:
            self.model.load_state_dict(self.good["model"])
            self.optim.load_state_dict(self.good["optim"])
            self.pi_optim.load_state_dict(self.good["pi_optim"])
            self.q_scale = self.good["q_scale"]
            self.restored += 1
        warnings.warn(f"learner update {self.updates}: non-finite {what}; the update was skipped"
                      + (" and the last good weights restored" if self.good is not None else ""), stacklevel=3)
        return {"skipped": 1.0, "restored": float(self.good is not None), "priority": None}

    def update(self, batch: Batch) -> dict[str, float | torch.Tensor]:
        """One gradient step. Returns scalar metrics and 'priority', each sample's surprise (B,)."""
        cfg, model = self.cfg, self.model
        b, h = batch.action.shape[:2]
        obs0 = {k: v[:, 0] for k, v in batch.obs.items()}
        model.reset_router_stats()
        with torch.no_grad():
            later = {k: v[:, 1:].reshape(b * h, *v.shape[2:]) for k, v in batch.obs.items()}
            z_next = model.encode(later).reshape(b, h, -1)
            pi_next = model.policy(z_next.reshape(b * h, -1))
            pick = torch.randperm(model.cfg.num_q)[:2]  # TD-MPC2's target: the lower of 2 random heads
            q_next = model.q(z_next.reshape(b * h, -1), pi_next, target=True, heads=pick).min(0).values.reshape(b, h)
            td_target = n_step_targets(batch.reward, batch.terminated, q_next, cfg.discount, cfg.td_steps)

        z = model.encode(obs0)
        zs = [z]
        for t in range(h):
            z = model.step(z, batch.action[:, t])
            zs.append(z)
        z_roll = torch.stack(zs[:-1], 1)  # (B, H, Z): the latents the actions were taken in
        z_pred = torch.stack(zs[1:], 1)  # (B, H, Z): the predicted next latents
        decay = cfg.rho ** torch.arange(h, dtype=torch.float32, device=z.device)  # (H,)

        flat_z, flat_a = z_roll.reshape(b * h, -1), batch.action.reshape(b * h, -1)
        reward_logits = model.reward_logits(flat_z, flat_a).reshape(b, h, -1)
        q_logits = model.q_logits(flat_z, flat_a).reshape(-1, b, h, reward_logits.shape[-1])
        consistency = ((z_pred - z_next).pow(2).mean(-1) * decay).mean(1)  # (B,)
        reward_loss = (model.scalar_loss(reward_logits, batch.reward) * decay).mean(1)
        value_loss = (model.scalar_loss(q_logits, td_target).mean(0) * decay).mean(1)
        per_sample = cfg.consistency_coef * consistency + cfg.reward_coef * reward_loss + cfg.value_coef * value_loss
        loss = (per_sample * batch.weight).mean() + model.cfg.moe.balance_coef * model.balance_loss()
        recon = torch.zeros((), device=z.device)
        if model.decoder is not None and "image" in obs0:
            n = min(cfg.reconstruct_samples, b)
            newest = obs0["image"][:n, ..., -3:]  # of stacked frames, the decoder draws the newest
            recon = F.mse_loss(model.decode(zs[0][:n]), newest.float() / 255.0)
            loss = loss + cfg.reconstruction_coef * recon

        if self.good is None:  # the weights this learner started from (fresh, or loaded)
            self.snapshot()
        if not torch.isfinite(loss):
            return self.recover("loss")
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.world_params, cfg.grad_clip)
        if not torch.isfinite(grad_norm):
            return self.recover("gradient")
        self.optim.step()
        pi_loss, entropy = self.update_policy(z_roll.detach().reshape(b * h, -1), decay.repeat(b))
        if math.isnan(pi_loss):
            return self.recover("policy loss or gradient")
        model.update_target(cfg.tau)
        self.updates += 1
        if self.updates % cfg.snapshot_every == 0:  # only weights that have just learned without trouble
            self.snapshot()

        with torch.no_grad():
            reward_pred = model.scalar(reward_logits[:, 0].detach())
            first = surprise(z_pred[:, 0], z_next[:, 0], reward_pred, batch.reward[:, 0])["total"]
        return {
            "loss": float(loss.detach()), "consistency_loss": float(consistency.detach().mean()),
            "reward_loss": float(reward_loss.detach().mean()), "value_loss": float(value_loss.detach().mean()),
            "reconstruction_loss": float(recon.detach()), "policy_loss": pi_loss, "policy_entropy": entropy,
            "grad_norm": float(grad_norm), "skipped": 0.0, "restored": 0.0, **model.router_stats(),
            "priority": first.detach(),
        }

    def update_policy(self, z: torch.Tensor, decay: torch.Tensor) -> tuple[float, float]:
        """Push the prior toward high-Q actions. z (N, Z) detached, decay (N,)."""
        model = self.model
        model.q_heads.requires_grad_(False)  # the policy moves toward high Q; Q itself stays put
        action, entropy = model.policy_sample(z)
        q = model.value(z, action)
        model.q_heads.requires_grad_(True)
        scale = float(q.detach().abs().mean())
        if not math.isfinite(scale):
            return float("nan"), float("nan")
        self.q_scale += 0.01 * (scale + 1e-2 - self.q_scale)
        loss = -((q / self.q_scale + self.cfg.entropy_coef * entropy) * decay).mean()
        if not torch.isfinite(loss):
            return float("nan"), float("nan")
        self.pi_optim.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.policy_head.parameters(), self.cfg.grad_clip)
        if not torch.isfinite(norm):
            return float("nan"), float("nan")
        self.pi_optim.step()
        self.pi_optim.zero_grad(set_to_none=True)  # so no stale gradient rides into the next update
        return float(loss.detach()), float(entropy.detach().mean())
