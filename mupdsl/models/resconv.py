"""The residual ConvNet of seed 002 App. J.4: 3x3 convolutions, stride 1, ``k`` layers per residual block,
average pooling after every third block followed by a (non-residual) convolution, global pooling, readout."""

from __future__ import annotations

import torch
from torch import nn

CLASSES = 10


class Block(nn.Module):
    def __init__(self, width: int, k: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(k):
            layers += [nn.ReLU(), nn.Conv2d(width, width, 3, padding=1, bias=False)]
        self.branch = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class ResConvNet(nn.Module):
    def __init__(self, width: int, depth: int = 3, k: int = 1, in_channels: int = 3, classes: int = CLASSES) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i in range(depth):
            stages.append(Block(width, k))
            if (i + 1) % 3 == 0 and i + 1 < depth:
                stages += [nn.AvgPool2d(2), nn.Conv2d(width, width, 3, padding=1, bias=False)]
        self.blocks = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.readout = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x))
        return self.readout(torch.flatten(self.pool(torch.relu(h)), 1))


def build(width: int, depth: int = 3, k: int = 1) -> nn.Module:
    return ResConvNet(width, depth, k)


def build_k2(width: int, depth: int = 3) -> nn.Module:
    return ResConvNet(width, depth, k=2)


def example_batch(batch_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 3, 8, 8, generator=g), torch.randint(0, CLASSES, (batch_size,), generator=g)
