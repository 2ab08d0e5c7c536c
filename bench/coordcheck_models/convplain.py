"""Plain ConvNet as one nn.Sequential: conv, max-pool, convs, adaptive pool, flatten, Linear.

Written for the coordcheck verdict matrix (bench/coordcheck_matrix.py); used nowhere else."""

import torch
from torch import nn

def build(width, depth=2):
    layers = [nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    for _ in range(depth):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
    return nn.Sequential(*layers)

def example_batch(n):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
