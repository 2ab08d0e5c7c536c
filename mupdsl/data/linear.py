"""The two-layer linear network's data of seed 002 Sec. 5: X = I_D, Y = X w* with w* ~ N(0, I_D)."""

from __future__ import annotations

import torch


def linear_task(dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(X, Y, w*): the identity design and its targets."""
    g = torch.Generator().manual_seed(seed)
    w_star = torch.randn(dim, generator=g)
    X = torch.eye(dim)
    return X, X @ w_star, w_star
