"""Synthetic teacher tasks: labels from a fixed random two-layer network on Gaussian inputs."""

from __future__ import annotations

import torch


def teacher(num_samples: int, dim: int = 40, classes: int = 10, hidden: int = 64, seed: int = 0
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y): x ~ N(0, I_dim); y = argmax of a random tanh network's logits (classification, ``classes`` labels)."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(dim, hidden, generator=g) / dim ** 0.5
    w2 = torch.randn(hidden, classes, generator=g) / hidden ** 0.5
    x = torch.randn(num_samples, dim, generator=g)
    return x, (torch.tanh(x @ w1) @ w2).argmax(dim=1)
