"""Seed 002 Sec. 5's two-layer linear network, f(X) = X E V, in plain PyTorch (the spec adds 1/(γ sqrt(N D)))."""

from __future__ import annotations

import torch
from torch import nn

DIM = 16


class TwoLayerLinear(nn.Module):
    def __init__(self, width: int, dim: int = DIM) -> None:
        super().__init__()
        self.E = nn.Linear(dim, width, bias=False)
        self.V = nn.Linear(width, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.V(self.E(x)).squeeze(-1)


def build(width: int, depth: int = 1) -> nn.Module:
    return TwoLayerLinear(width)


def example_batch(batch_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    from ..data import linear_task  # noqa: PLC0415

    X, Y, _ = linear_task(DIM, seed)
    return X, Y
