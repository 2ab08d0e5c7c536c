"""Transformer built from nn.TransformerEncoder (pre-LN layers), tied embedding and head.

Written for the coordcheck verdict matrix (bench/coordcheck_matrix.py); used nowhere else."""

import torch
from torch import nn

VOCAB, CTX = 40, 10

class Model(nn.Module):
    def __init__(self, width, depth=2):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        layer = nn.TransformerEncoderLayer(width, nhead=max(1, width // 32), dim_feedforward=2 * width,
                                           dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(width, VOCAB, bias=False)
        self.head.weight = self.embed.weight
    def forward(self, x):
        return self.head(self.encoder(self.embed(x)))

def build(width, depth=2):
    return Model(width, depth)

def example_batch(n):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (n, CTX), generator=g)
    return x, torch.roll(x, -1, 1)
