"""Mixture-of-Experts feed-forward layer: top-k routing over E expert MLPs, with load balancing.

Tokens arrive flat, (N, d). A linear router scores every expert; each token goes to its top-k
experts, and their outputs are summed with the router weights, renormalized over the k (for k > 1).
Only the chosen experts run: tokens are laid out per expert in one padded buffer, pushed through all
experts by two batched matmuls, and scattered back with `index_add_`. No Python loop over experts.
By default the buffer holds a row block per expert chosen at least once, each padded to the busiest
expert's load: the work is about N*k when the router is balanced (the balance loss keeps it so) or
when all tokens go to the same k experts (a planner's candidates, which share one start state), up
to E/k times more in between. A `capacity_factor` fixes the buffer at cf * N*k/E rows per expert
instead and drops the overflow: the work is then bounded, and the layer never reads a count back to
the host, which on a GPU is what an MoE call spends most of its time waiting for.

Balance: the Switch Transformer loss E * sum_e f_e * P_e, where f_e is the share of routed slots that
go to expert e and P_e the mean router probability of e. It is smallest when both are uniform.

`dense=True` swaps in one MLP of hidden size expert_hidden * top_k: the same active parameters per
token, so a dense and a sparse model can be compared at equal compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.config import MoEConfig


@dataclass
class RouterStats:
    """What the last forward pass of one MoE layer did, for logging."""

    load: torch.Tensor  # (E,) share of routed slots sent to each expert (before any capacity drop); sums to 1
    entropy: float  # mean entropy of the router's distribution over experts, in nats
    dropped: float  # share of routed slots dropped by the capacity limit
    balance_loss: torch.Tensor  # scalar, differentiable


class MoE(nn.Module):
    def __init__(self, d: int, cfg: MoEConfig):
        super().__init__()
        if not 1 <= cfg.top_k <= cfg.num_experts:
            raise ValueError(f"moe.top_k must be in [1, moe.num_experts={cfg.num_experts}], got {cfg.top_k}")
        self.cfg = cfg
        e, h = cfg.num_experts, cfg.expert_hidden
        self.router = nn.Linear(d, e, bias=False)
        self.w1 = nn.Parameter(torch.empty(e, d, h))
        self.b1 = nn.Parameter(torch.zeros(e, h))
        self.w2 = nn.Parameter(torch.empty(e, h, d))
        self.b2 = nn.Parameter(torch.zeros(e, d))
        for w in (self.w1, self.w2):
            nn.init.normal_(w, std=1.0 / math.sqrt(w.shape[1]))
        nn.init.normal_(self.router.weight, std=0.02)
        self.stats: RouterStats | None = None  # of the last forward pass with gradients
        self.balance_terms: list[torch.Tensor] = []  # one per such pass since `reset_router_stats`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d) -> (..., d)."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        n, (e, k) = x.shape[0], (self.cfg.num_experts, self.cfg.top_k)
        probs = F.softmax(self.router(x), dim=-1)  # (N, E)
        gate, expert = probs.topk(k, dim=-1)  # (N, k)
        if k > 1:  # with k = 1 a renormalized gate is always 1 and the router would learn nothing (Switch)
            gate = gate / gate.sum(-1, keepdim=True)

        # Dispatch without a Python loop over experts: sort the N*k routed slots by expert, give each
        # its rank within its expert, and lay them out in an (E, C, d) buffer that two batched
        # matmuls run through. C is the busiest expert's load, or the fixed capacity.
        flat_expert = expert.reshape(-1)  # (N*k,) slot -> expert
        sorted_expert, order = flat_expert.sort(stable=True)
        counts = torch.bincount(flat_expert, minlength=e)  # (E,)
        first = torch.cumsum(counts, 0) - counts  # where each expert's run starts in the sorted slots
        rank = torch.arange(n * k, device=x.device) - first.index_select(0, sorted_expert)
        w1, b1, w2, b2 = self.w1, self.b1, self.w2, self.b2
        groups = e  # experts that get rows in the buffer
        if self.cfg.capacity_factor > 0:
            # A fixed buffer: its size never depends on the routing, so nothing is read back to the
            # host (on a GPU that sync costs more than the experts). Overflow slots drop to a spare row.
            c = math.ceil(self.cfg.capacity_factor * n * k / e)
            kept = rank < c
            row = torch.where(kept, sorted_expert * c + rank, e * c)
        else:  # the buffer fits the busiest expert, so no slot ever drops
            c = int(counts.max())
            kept = None
            used = counts > 0
            if not bool(used.all()):
                # Experts nobody chose get no rows: a planner's candidates share one start state and
                # mostly route alike, so padding all E to the busiest load would double the work.
                sorted_expert = (used.cumsum(0) - 1).index_select(0, sorted_expert)
                chosen = used.nonzero().squeeze(1)
                w1, b1, w2, b2 = (w.index_select(0, chosen) for w in (w1, b1, w2, b2))
                groups = len(chosen)
            row = sorted_expert * c + rank  # each slot's row in the (groups * C) buffer
        token = order // k

        buf = x.new_zeros(groups * c + 1, shape[-1]).index_copy_(0, row, x.index_select(0, token))
        h = F.silu(torch.baddbmm(b1[:, None], buf[:-1].view(groups, c, shape[-1]), w1))
        y = torch.baddbmm(b2[:, None], h, w2).view(groups * c, shape[-1])
        slot_gate = gate.reshape(-1).index_select(0, order)
        if kept is not None:
            slot_gate = slot_gate * kept
            y = torch.cat([y, y.new_zeros(1, shape[-1])])  # the spare row's output, weighted 0
        weighted = y.index_select(0, row) * slot_gate[:, None]
        out = torch.zeros_like(x).index_add_(0, token, weighted)

        if torch.is_grad_enabled():  # statistics are for training and its logs, not for planning
            dropped = int((counts - c).clamp_min(0).sum())  # a host sync, in training only
            load = counts.float() / max(1, n * k)
            balance = e * (load * probs.mean(0)).sum()
            entropy = -(probs * probs.clamp_min(1e-9).log()).sum(-1).mean()
            self.stats = RouterStats(load, float(entropy.detach()), dropped / max(1, n * k), balance)
            self.balance_terms.append(balance)  # the dynamics call a layer once per rollout step
        return out.reshape(shape)


class DenseFFN(nn.Module):
    """The dense twin of `MoE`: one MLP with expert_hidden * top_k hidden units."""

    def __init__(self, d: int, cfg: MoEConfig):
        super().__init__()
        hidden = cfg.expert_hidden * cfg.top_k
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(x)))


def make_ffn(d: int, cfg: MoEConfig) -> nn.Module:
    return DenseFFN(d, cfg) if cfg.dense else MoE(d, cfg)


def reset_router_stats(module: nn.Module) -> None:
    """Forget the balance terms collected so far (call before each training step)."""
    for m in module.modules():
        if isinstance(m, MoE):
            m.balance_terms.clear()


def balance_loss(module: nn.Module) -> torch.Tensor:
    """Mean balance loss per call, summed over the MoE layers of `module`, since the last reset."""
    losses = [torch.stack(m.balance_terms).mean() for m in module.modules() if isinstance(m, MoE) and m.balance_terms]
    return torch.stack(losses).sum() if losses else torch.zeros(())


def router_summary(module: nn.Module) -> dict[str, float]:
    """Load balance (max / mean expert load), router entropy and dropped share, averaged over layers."""
    stats = [m.stats for m in module.modules() if isinstance(m, MoE) and m.stats is not None]
    if not stats:
        return {}
    return {
        "moe_max_load": float(sum(float(s.load.max() * s.load.numel()) for s in stats) / len(stats)),
        "moe_entropy": sum(s.entropy for s in stats) / len(stats),
        "moe_dropped": sum(s.dropped for s in stats) / len(stats),
    }
