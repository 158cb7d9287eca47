"""Scalars as distributions over fixed bins in symlog space (DreamerV3, TD-MPC2): reward and value.

A head predicts logits over `bins` points spread evenly on [vmin, vmax] in symlog space. Its value is
symexp of the softmax-weighted mean of the points. A target becomes a "two-hot" vector: its symlog
is split between the two nearest points in proportion to closeness, and the loss is cross-entropy.
The loss therefore has the same size whether returns are 0.5 or 500: one set of coefficients serves
tasks whose rewards differ by orders of magnitude, where a squared error would let the largest
return dominate the gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


class TwoHot(nn.Module):
    """`bins` points evenly on [vmin, vmax] in symlog space (vmin=-10: symexp(10) is about 22,000)."""

    def __init__(self, bins: int = 101, vmin: float = -10.0, vmax: float = 10.0):
        super().__init__()
        if bins < 2 or not vmin < vmax:
            raise ValueError(f"two-hot needs bins >= 2 and vmin < vmax, got {bins}, {vmin}, {vmax}")
        self.bins, self.vmin, self.vmax = bins, vmin, vmax
        self.width = (vmax - vmin) / (bins - 1)
        self.register_buffer("points", torch.linspace(vmin, vmax, bins), persistent=False)

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., bins) logits -> (...) scalars."""
        return symexp(F.softmax(logits, -1) @ self.points)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(...) scalars -> (..., bins) two-hot probabilities."""
        pos = ((symlog(x.float()) - self.vmin) / self.width).clamp(0, self.bins - 1)
        low = torch.nan_to_num(pos).floor().clamp(max=self.bins - 2)  # a valid index even for NaN ...
        frac = (pos - low).unsqueeze(-1)  # ... whose NaN still reaches the loss, to be caught there
        low = low.long().unsqueeze(-1)
        out = torch.zeros(*x.shape, self.bins, device=x.device)
        out.scatter_(-1, low, 1 - frac)
        out.scatter_add_(-1, low + 1, frac)
        return out

    @staticmethod
    def cross_entropy(logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """(..., bins) logits against (..., bins) target probabilities (broadcast) -> (...)."""
        return -(probs * F.log_softmax(logits, -1)).sum(-1)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of (..., bins) logits against (...) scalar targets -> (...)."""
        return self.cross_entropy(logits, self.encode(target))
