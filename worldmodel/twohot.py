"""Scalars as distributions over fixed bins in symlog space (DreamerV3, TD-MPC2): reward and value.

A head predicts logits over `bins` points spread evenly on [vmin, vmax] in symlog space. Its value is
symexp of the softmax-weighted mean of the points. A target becomes a "two-hot" vector: its symlog
is split between the two nearest points in proportion to closeness, and the loss is cross-entropy.
The loss therefore has the same size whether returns are 0.5 or 500: one set of coefficients serves
tasks whose rewards differ by orders of magnitude, where a squared error would let the largest
return dominate the gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


@dataclass(frozen=True)
class TwoHot:
    bins: int = 101
    vmin: float = -10.0  # in symlog space: symexp(10) is about 22,000
    vmax: float = 10.0

    def __post_init__(self) -> None:
        if self.bins < 2 or not self.vmin < self.vmax:
            raise ValueError(f"two-hot needs bins >= 2 and vmin < vmax, got {self.bins}, {self.vmin}, {self.vmax}")

    @property
    def width(self) -> float:
        return (self.vmax - self.vmin) / (self.bins - 1)

    def points(self, device: torch.device | None = None) -> torch.Tensor:
        return torch.linspace(self.vmin, self.vmax, self.bins, device=device)

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., bins) logits -> (...) scalars."""
        return symexp(F.softmax(logits, -1) @ self.points(logits.device))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(...) scalars -> (..., bins) two-hot probabilities."""
        pos = ((symlog(x) - self.vmin) / self.width).clamp(0, self.bins - 1)
        low = torch.nan_to_num(pos).floor().clamp(max=self.bins - 2)  # a valid index even for NaN ...
        frac = (pos - low).unsqueeze(-1)  # ... whose NaN still reaches the loss, to be caught there
        low = low.long().unsqueeze(-1)
        out = torch.zeros(*x.shape, self.bins, device=x.device, dtype=torch.float32)
        out.scatter_(-1, low, 1 - frac)
        out.scatter_add_(-1, low + 1, frac)
        return out

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of (..., bins) logits against (...) scalar targets -> (...)."""
        return -(self.encode(target) * F.log_softmax(logits, -1)).sum(-1)
