"""Pre-LN transformer built from nn.MultiheadAttention (need_weights=False), tied embedding and head.

Written for the coordcheck verdict matrix (bench/coordcheck_matrix.py); used nowhere else."""

import torch
from torch import nn

VOCAB, CTX = 50, 12

class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, max(1, d // 32), batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Linear(4 * d, d))
    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ff(self.norm2(x))

class Model(nn.Module):
    def __init__(self, width, depth=2):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, VOCAB, bias=False)
        self.out.weight = self.emb.weight
    def forward(self, x):
        h = self.emb(x)
        for b in self.blocks:
            h = b(h)
        return self.out(self.norm(h))

def build(width, depth=2):
    return Model(width, depth)

def example_batch(n):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (n, CTX), generator=g)
    return x, torch.roll(x, -1, 1)
