"""Pattern: tied readout through a dtype cast: ``F.linear(x, self.tok.weight.to(x.dtype))``.

The readout weight is the embedding Parameter, passed through ``.to(x.dtype)`` (a no-op in fp32; fx records
call_method "to", torch.export records aten.to.dtype preceded by aten._assert_tensor_metadata) before
F.linear -- so the parameter reaches the matmul through an intermediate node, not directly.

Correct analysis: same as a plain tied readout -- tok.weight [64, w] is both the input embedding and the
output matrix (fan_in = w).  The cast is transparent (value-preserving) and must be looked through: the
F.linear is the output layer, µP's readout multiplier (~1/width relative to base) applies to its result,
and the tie must be handled as for readout_transposed.

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
        return F.linear(x, self.tok.weight.to(x.dtype))


def build(width: int, depth: int = 2) -> nn.Module:
    return Model(width, depth)


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, VOCAB, (batch_size, SEQ_LEN + 1), generator=g)
    return (seq[:, :-1].contiguous(),), seq[:, 1:].contiguous()
