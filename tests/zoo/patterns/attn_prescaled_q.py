"""Pattern: attention scale applied to q BEFORE the q @ k^T matmul (timm non-fused / Swin / nanoGPT-variants).

    q = q * self.scale                 # self.scale = d_head ** -0.5, Python float attribute
    att = q @ k.transpose(-2, -1)
    att = att.masked_fill(~causal, -inf); softmax; @ v

Correct analysis: the model's own attention scale is d_head^-1/2, applied to q before the matmul (it is a
multiplication of the q activations, not of the logits, but it scales the logits identically).  µP's 1/d_head
attention scale must REPLACE this factor (total logit scale ~ 1/d_head), not multiply on top of it (which
would give d_head^-3/2).  q.weight itself is an ordinary hidden matrix.

Shared skeleton (identical in all attn_*.py / qk_norm.py pattern files, only the attention core differs):
  vocab 64, context 8, width = d_model, 4 heads (d_head = width/4), depth = number of pre-LN blocks.
  tok nn.Embedding(64, w) + pos nn.Embedding(8, w)  ->  blocks  ->  ln_f  ->  head nn.Linear(w, 64, bias=False)
  (head NOT tied).  Block: x = x + attn(ln1(x)); x = x + mlp(ln2(x)); mlp = fc Linear(w, 4w), GELU,
  proj Linear(4w, w).  attn: SEPARATE q / k / v nn.Linear(w, w) (bias) and proj nn.Linear(w, w); causal.
  The causal mask is built in forward from torch.arange(T) (no buffer, so torch.fx can trace it).
  PyTorch default init.  Inputs: token ids (B, 8); targets: next tokens (B, 8).
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
        causal = i[:, None] >= i[None, :]  # (T, T) bool, True = may attend
        q = q * self.scale
        att = q @ k.transpose(-2, -1)
        att = att.masked_fill(~causal, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = att @ v
        y = y.transpose(1, 2).reshape(B, T, C)
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
        self.tok = nn.Embedding(VOCAB, width)
        self.pos = nn.Embedding(SEQ_LEN, width)
        self.blocks = nn.ModuleList([Block(width) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB, bias=False)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


def build(width: int, depth: int = 2) -> nn.Module:
    return Model(width, depth)


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, VOCAB, (batch_size, SEQ_LEN + 1), generator=g)
    return (seq[:, :-1].contiguous(),), seq[:, 1:].contiguous()
