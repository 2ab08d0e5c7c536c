"""Hand-written GPT-2-style LM whose Block.forward defeats torch.fx.symbolic_trace but not torch.export.

Model: vocab 256, context 16, d_model = width, 4 heads (d_head = width/4), MLP 4*width, n_layer = depth.
  tok  nn.Embedding(256, w);  pos nn.Embedding(16, w);  x = tok(idx) + pos(arange(T))
  blocks.i (pre-LN):
      ln1 LayerNorm(w); attn.q / attn.k / attn.v: SEPARATE nn.Linear(w, w) (bias); attn.proj nn.Linear(w, w)
      logits = (q @ k.transpose(-2, -1)) * self.scale      # self.scale = d_head ** -0.5, a Python float
                                                           # stored on the module, applied AFTER the matmul
      causal mask via masked_fill(~mask, -inf); softmax(-1); @ v
      ln2 LayerNorm(w); mlp.fc Linear(w, 4w), GELU (exact), mlp.proj Linear(4w, w)
      x = x + attn(ln1(x)); x = x + mlp(ln2(x))
  ln_f LayerNorm(w); head nn.Linear(w, 256, bias=False) with ``self.head.weight = self.tok.weight``
      (TIED: one Parameter, listed once by named_parameters() as tok.weight).
Init (nanoGPT style): every 2-D weight (Linear, tok, pos) normal(0, 0.02) (width-independent), biases 0,
LayerNorm 1/0.

What makes it untraceable: CausalSelfAttention.forward (called from Block.forward) branches on the SEQUENCE
LENGTH read from the input tensor: ``T = x.size(1); if T > 1: <apply causal mask>``.  Under
torch.fx.symbolic_trace x.size(1) is a Proxy and ``if proxy:`` raises TraceError ("symbolically traced
variables cannot be used as inputs to control flow").  The branch does not change the result (for T == 1
the causal mask is all-True).  torch.export.export(model, inputs, strict=False) specialises on the example
input's concrete shape (T = 16), so it traces fine and the graph contains the masked branch.
(A VALUE-dependent branch -- ``if t.item() > 0`` or ``if bool(t.all())`` -- would ALSO break torch.export with
GuardOnDataDependentSymNode, so it is deliberately not used.)
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB = 256
SEQ_LEN = 16
N_HEAD = 4


class CausalSelfAttention(nn.Module):
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
        B, T, C = x.size()
        q = self.q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = self.v(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * self.scale
        if T > 1:  # shape-dependent Python control flow: fx cannot trace it, export specialises on T
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~mask, float("-inf"))
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
        self.attn = CausalSelfAttention(width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = MLP(width)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        x = x + self.mlp(self.ln2(x))
        return x


class GPT(nn.Module):
    def __init__(self, width: int, depth: int):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, width)
        self.pos = nn.Embedding(SEQ_LEN, width)
        self.blocks = nn.ModuleList([Block(width) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB, bias=False)
        self.head.weight = self.tok.weight
        for name, p in self.named_parameters():  # nanoGPT-style init
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                nn.init.normal_(p, mean=0.0, std=0.02)

    def forward(self, idx):
        T = idx.size(1)
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


def build(width: int, depth: int = 2) -> nn.Module:
    return GPT(width, depth)


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, VOCAB, (batch_size, SEQ_LEN + 1), generator=g)
    return (seq[:, :-1].contiguous(),), seq[:, 1:].contiguous()
