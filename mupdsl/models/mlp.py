"""A multilayer perceptron: input layer, ``depth`` hidden layers of ``width``, readout (TP4 §2's MLP)."""

from __future__ import annotations

import torch
from torch import nn

IN_DIM = 40   # MNIST-1D's input length
CLASSES = 10


class MLP(nn.Module):
    def __init__(self, width: int, depth: int = 2, in_dim: int = IN_DIM, classes: int = CLASSES,
                 activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.input = nn.Linear(in_dim, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.act = activation()
        self.readout = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.input(x))
        for layer in self.hidden:
            h = self.act(layer(h))
        return self.readout(h)


def build(width: int, depth: int = 2) -> nn.Module:
    return MLP(width, depth)


def example_batch(batch_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, IN_DIM, generator=g)
    return x, torch.randint(0, CLASSES, (batch_size,), generator=g)
