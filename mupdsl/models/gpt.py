"""A GPT-2-style decoder (Radford et al. 2019): token and position embeddings, causal attention written as
matmul -> scale -> mask -> softmax, GELU MLP, pre-LN or post-LN blocks, LM head tied to the token embedding."""

from __future__ import annotations

import math

import torch
from torch import nn

VOCAB = 64
CONTEXT = 16
HEADS = 4


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, context: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.o = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        d = c // self.heads
        q = self.q(x).view(b, t, self.heads, d).transpose(1, 2)
        k = self.k(x).view(b, t, self.heads, d).transpose(1, 2)
        v = self.v(x).view(b, t, self.heads, d).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d)
        att = att + torch.full_like(att, float("-inf")).triu(1)   # causal mask, added (a trap for block finders)
        y = torch.softmax(att, dim=-1) @ v
        return self.o(y.transpose(1, 2).reshape(b, t, c))


def new_gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU as GPT-2 writes it (tanh form); its ``x + 0.044715 x³`` is an add that is not a residual block."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, context: int, pre_ln: bool) -> None:
        super().__init__()
        self.pre_ln = pre_ln
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, context)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.proj = nn.Linear(4 * width, width)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(new_gelu(self.fc(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_ln:
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))
        x = self.ln1(x + self.attn(x))
        return self.ln2(x + self.mlp(x))


class GPT(nn.Module):
    def __init__(self, width: int, depth: int = 2, heads: int = HEADS, vocab: int = VOCAB, context: int = CONTEXT,
                 pre_ln: bool = True, tied: bool = True) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads, context, pre_ln) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width) if pre_ln else nn.Identity()
        self.head = nn.Linear(width, vocab, bias=False)
        for table in (self.tok, self.pos):   # GPT-2's embedding init, N(0, 0.02²): width-independent
            nn.init.normal_(table.weight, std=0.02)
        if tied:
            self.head.weight = self.tok.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        h = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h))


def build(width: int, depth: int = 2) -> nn.Module:
    return GPT(width, depth, pre_ln=True)


def build_post_ln(width: int, depth: int = 2) -> nn.Module:
    return GPT(width, depth, pre_ln=False)


def example_batch(batch_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, VOCAB, (batch_size, CONTEXT + 1), generator=g)
    return idx[:, :-1], idx[:, 1:]
