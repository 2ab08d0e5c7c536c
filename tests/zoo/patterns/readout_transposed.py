"""Pattern: tied readout written as a matmul with the transposed embedding: ``logits = x @ self.tok.weight.T``.

There is no readout module at all: the output layer is the embedding Parameter used a second time, through
``Tensor.T`` and ``@``, not through nn.Linear / F.linear (fx: getattr(weight, "T") + matmul; torch.export:
aten.numpy_T.default + aten.matmul.default).

Correct analysis: tok.weight [64, w] is BOTH the input embedding (indexed by nn.Embedding) and the readout
matrix (fan_in = w, the width dim is its dim 1 here, applied transposed).  A µP plan must recognise the
matmul as the output layer (readout multiplier ~ 1/width relative to base, on the logits / on this use only)
and handle the tie (one tensor, two roles: embedding LR/init rules vs. output-layer rules must be reconciled,
e.g. by a multiplier on the readout use rather than by re-initialising the shared tensor).

Shared skeleton (same tiny causal LM as the attn_*.py patterns; only the parts described above differ):
  vocab 64, context 8, width = d_model, 4 heads (d_head = width/4), depth = number of pre-LN blocks.
  tok nn.Embedding(64, w) + pos nn.Embedding(8, w) -> blocks -> ln_f -> readout.
  attn: separate q / k / v nn.Linear(w, w) (bias), logits ``(q @ k^T) * self.scale`` with
  self.scale = d_head ** -0.5 (Python float) applied AFTER the matmul, causal mask from torch.arange,
  proj nn.Linear(w, w).  mlp: fc Linear(w, 4w), GELU, proj Linear(4w, w).
  tok.weight init normal(0, 0.02) (so the tied logits are O(1)); everything else PyTorch default.  Inputs: token ids (B, 8); targets: next tokens (B, 8).
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
        nn.init.normal_(self.tok.weight, std=0.02)  # GPT-2-like embedding init, keeps tied logits O(1)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        x = self.ln_f(x)
        return x @ self.tok.weight.T


def build(width: int, depth: int = 2) -> nn.Module:
    return Model(width, depth)


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, VOCAB, (batch_size, SEQ_LEN + 1), generator=g)
    return (seq[:, :-1].contiguous(),), seq[:, 1:].contiguous()
