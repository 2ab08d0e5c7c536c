"""Pattern: a WIDTH-DEPENDENT constant in forward, T5-style: ``x = x * self.width ** -0.5`` right before a tied readout.

    x = ln_f(x)
    x = x * self.width ** -0.5        # self.width is a Python int attribute -> a literal constant in any
                                      # graph (0.125 at width 64, 0.0884 at 128, ...), not a tensor
    logits = self.head(x)             # nn.Linear(w, 64, bias=False) whose weight IS tok.weight (tied)

Correct analysis: the model already contains its own readout multiplier w^-1/2 (this is exactly T5's
``sequence_output * (self.model_dim ** -0.5)`` before its tied lm_head).  Within one graph it is just a
number; it is only recognisable as width-dependent by comparing graphs at two widths (the constant changes
with width while everything else only changes shape).  A µP plan must treat it as the model's own readout
multiplier and REPLACE it (so the TOTAL readout multiplier follows the µP rule, ~1/width relative to base),
not multiply µP's 1/width on top of it (which would give w^-3/2).  The tie (head.weight = tok.weight) is as
in readout_transposed.

Shared skeleton (same tiny causal LM as the attn_*.py patterns; only the parts described above differ):
  vocab 64, context 8, width = d_model, 4 heads (d_head = width/4), depth = number of pre-LN blocks.
  tok nn.Embedding(64, w) + pos nn.Embedding(8, w) -> blocks -> ln_f -> readout.
  attn: separate q / k / v nn.Linear(w, w) (bias), logits ``(q @ k^T) * self.scale`` with
  self.scale = d_head ** -0.5 (Python float) applied AFTER the matmul, causal mask from torch.arange,
  proj nn.Linear(w, w).  mlp: fc Linear(w, 4w), GELU, proj Linear(4w, w).
  tok.weight keeps nn.Embedding's N(0, 1) init (like T5's shared embedding, std 1.0) -- the w^-1/2 makes the tied logits O(1); everything else PyTorch default.  Inputs: token ids (B, 8); targets: next tokens (B, 8).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB = 64
SEQ_LEN = 8
N_HEAD = 4


class Attention(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.n_head = N_HEAD
        self.head_dim = width // N_HEAD
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = self.v(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        i = torch.arange(T, device=x.device)
        causal = i[:, None] >= i[None, :]
        att = (q @ k.transpose(-2, -1)) * self.scale
        att = att.masked_fill(~causal, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Linear(width, 4 * width)
        self.proj = nn.Linear(4 * width, width)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = Attention(width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = MLP(width)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        x = x + self.mlp(self.ln2(x))
        return x


class Model(nn.Module):
    def __init__(self, width: int, depth: int):
        super().__init__()
        self.width = width
        self.tok = nn.Embedding(VOCAB, width)
        self.pos = nn.Embedding(SEQ_LEN, width)
        self.blocks = nn.ModuleList([Block(width) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        x = self.ln_f(x)
        x = x * self.width ** -0.5
        return self.head(x)


def build(width: int, depth: int = 2) -> nn.Module:
    return Model(width, depth)


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, VOCAB, (batch_size, SEQ_LEN + 1), generator=g)
    return (seq[:, :-1].contiguous(),), seq[:, 1:].contiguous()
