"""Pre-LN residual MLP: Linear stem, nn.Sequential blocks x + MLP(LN(x)) with a 2x GELU hidden layer, LN, head.

Written for the coordcheck verdict matrix (bench/coordcheck_matrix.py); used nowhere else."""

import torch
from torch import nn

class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.net = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
    def forward(self, x):
        return x + self.net(self.norm(x))

class ResMLP(nn.Module):
    def __init__(self, width, depth=4):
        super().__init__()
        self.stem = nn.Linear(40, width)
        self.blocks = nn.Sequential(*[Block(width) for _ in range(depth)])
        self.final_norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 10)
    def forward(self, x):
        return self.head(self.final_norm(self.blocks(self.stem(x))))

def build(width, depth=4):
    return ResMLP(width, depth)

def example_batch(n):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 40, generator=g), torch.randint(0, 10, (n,), generator=g)
