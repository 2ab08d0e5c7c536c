"""A small pre-activation ResNet with BatchNorm (two convolutions per block), for CIFAR-sized inputs."""

from __future__ import annotations

import torch
from torch import nn

CLASSES = 10


class BasicBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.conv2(torch.relu(self.bn2(out)))
        return x + out


class ResNet(nn.Module):
    def __init__(self, width: int, depth: int = 2, classes: int = CLASSES) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.layer1 = nn.Sequential(*[BasicBlock(width) for _ in range(depth)])
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.layer2 = nn.Sequential(*[BasicBlock(2 * width) for _ in range(depth)])
        self.bn = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer2(self.down(self.layer1(self.stem(x))))
        h = torch.relu(self.bn(h)).mean(dim=(2, 3))
        return self.fc(h)


def build(width: int, depth: int = 2) -> nn.Module:
    return ResNet(width, depth)


def example_batch(batch_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 3, 16, 16, generator=g), torch.randint(0, CLASSES, (batch_size,), generator=g)
