"""Mixture-of-Experts feed-forward layer: top-k routing over E expert MLPs, with load balancing.

Tokens arrive flat, (N, d). A linear router scores every expert; each token goes to its top-k
experts, and their outputs are summed with the router weights, renormalized over the k (for k > 1).
Only the chosen experts run, and no Python loop goes over them: the routed slots are sorted by
expert, so each expert's slots form one run of rows, and the outputs are scattered back with
`index_add_`. The runs go through the experts in one of two ways. By default they are laid out in
one buffer, each expert's block padded to the busiest expert's load, for two batched matmuls: about
N*k rows' work when the router is balanced (the balance loss keeps a training batch so). A plan's
256 candidates share one start state and mostly route alike, so their buffer can be up to E/k times
larger than N*k; past PADDED_LIMIT times, on the CPU, torch's grouped matmul takes the runs as they
are instead, each expert doing exactly its own slots' work (it is slower than a balanced buffer, and
on a GPU it wants bfloat16). A `capacity_factor` fixes the buffer at cf * N*k/E rows per expert and
drops the overflow: the work is then bounded, and the layer never reads a count back to the host,
which on a GPU is what an MoE call spends most of its time waiting for.

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

        # Dispatch without a Python loop over experts: sort the N*k routed slots by expert, so that each
        # expert's slots are one run of rows, and push the runs through the experts' matmuls at once.
        flat_expert = expert.reshape(-1)  # (N*k,) slot -> expert
        sorted_expert, order = flat_expert.sort(stable=True)
        counts = torch.bincount(flat_expert, minlength=e)  # (E,)
        token = order // k  # the token of each sorted slot
        slot_gate = gate.reshape(-1).index_select(0, order)
        if self.cfg.capacity_factor > 0:
            c = math.ceil(self.cfg.capacity_factor * n * k / e)
        else:
            c = int(counts.max())  # the busiest expert's load, read back to the host
        if self.cfg.capacity_factor <= 0 and e * c > PADDED_LIMIT * n * k and grouped_mm_runs_on(x, self.w1):
            y, dropped = self._grouped(x.index_select(0, token), sorted_expert, counts), 0
        else:
            y, slot_gate, dropped = self._padded(x, token, sorted_expert, counts, slot_gate, c)
        out = torch.zeros_like(x).index_add_(0, token, y * slot_gate[:, None])

        if torch.is_grad_enabled():  # statistics are for training and its logs, not for planning
            load = counts.float() / max(1, n * k)
            balance = e * (load * probs.mean(0)).sum()
            entropy = -(probs * probs.clamp_min(1e-9).log()).sum(-1).mean()
            self.stats = RouterStats(load, float(entropy.detach()), int(dropped) / max(1, n * k), balance)
            self.balance_terms.append(balance)  # the dynamics call a layer once per rollout step
        return out.reshape(shape)

    def _grouped(self, xs: torch.Tensor, sorted_expert: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Slots sorted by expert (N*k, d) -> each slot's expert output (N*k, d): one grouped matmul per
        layer over the runs as they are, so an expert does exactly its own slots' work."""
        offs = counts.cumsum(0).to(torch.int32)  # where each expert's run ends
        h = F.silu(F.grouped_mm(xs, self.w1, offs=offs) + self.b1.index_select(0, sorted_expert))
        return F.grouped_mm(h, self.w2, offs=offs) + self.b2.index_select(0, sorted_expert)

    def _padded(self, x: torch.Tensor, token: torch.Tensor, sorted_expert: torch.Tensor, counts: torch.Tensor,
                slot_gate: torch.Tensor, c: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | int]:
        """The slots laid out in an (E, c, d) buffer for two batched matmuls, c the busiest expert's
        load or the fixed capacity. Returns each slot's output, its gate (0 if dropped) and the count
        of dropped slots."""
        e, d = self.cfg.num_experts, x.shape[-1]
        first = torch.cumsum(counts, 0) - counts  # where each expert's run starts in the sorted slots
        rank = torch.arange(len(token), device=x.device) - first.index_select(0, sorted_expert)
        if self.cfg.capacity_factor > 0:
            # A fixed buffer: its size never depends on the routing, so nothing is read back to the
            # host (on a GPU that sync costs more than the experts). Overflow slots go to a spare row.
            kept = rank < c
            row = torch.where(kept, sorted_expert * c + rank, e * c)
            slot_gate = slot_gate * kept
            dropped = (counts - c).clamp_min(0).sum()
        else:  # the buffer fits the busiest expert, so no slot ever drops
            row = sorted_expert * c + rank
            dropped = 0
        buf = x.new_zeros(e * c + 1, d).index_copy_(0, row, x.index_select(0, token))
        h = F.silu(torch.baddbmm(self.b1[:, None], buf[:-1].view(e, c, d), self.w1))
        y = torch.baddbmm(self.b2[:, None], h, self.w2).view(e * c, d)
        if self.cfg.capacity_factor > 0:
            y = torch.cat([y, y.new_zeros(1, d)])  # the spare row's output, weighted 0
        return y.index_select(0, row), slot_gate, dropped


def grouped_mm_runs_on(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether torch's grouped matmul serves these tokens and expert weights: float32 on the CPU, where
    this torch has one (2.13 has). On a GPU it wants bfloat16, so a float32 model there keeps the
    padded buffer, and other dtypes keep it everywhere: it is the path autocast and every torch know."""
    return GROUPED_MM and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32


GROUPED_MM = hasattr(F, "grouped_mm")
# Above this many buffer rows per routed slot, the grouped matmul is faster than the padded buffer.
# On a 2-core CPU (256 and 768 tokens, top-2 of 4 experts 128 wide) it costs 0.97 to 1.14x a
# balanced buffer's forward (1.14 to 1.32x forward and backward) and 0.62 to 0.79x a lopsided one's.
PADDED_LIMIT = 1.5


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
