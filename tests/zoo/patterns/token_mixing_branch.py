"""Pattern: MLP-Mixer-style TOKEN-MIXING residual branch whose Linear layers do not scale with width.

Model (sequence classification; width = channels, depth = number of blocks):
  tok nn.Embedding(64, w) + pos nn.Embedding(8, w)  ->  x: (B, 8 tokens, w)
  blocks.i:
      x = x + self.token_mlp(self.ln1(x).transpose(1, 2)).transpose(1, 2)
          token_mlp = Sequential(Linear(8, 32), GELU, Linear(32, 8))   # acts along the TOKEN axis
      x = x + self.channel_mlp(self.ln2(x))
          channel_mlp = Sequential(Linear(w, 4w), GELU, Linear(4w, w))
  ln_f -> mean over tokens -> head nn.Linear(w, 10)
Inputs: token ids (B, 8); targets: one class in [0, 10) per sequence (B,).  PyTorch default init.

Correct analysis: token_mlp.0.weight [32, 8] and token_mlp.2.weight [8, 32] have NO width-dependent
dimension (identical shapes at every width): they are width-independent ("fixed") layers -- under µP their
init and learning rate stay exactly as at the base width, even though they sit inside a residual branch of a
width-scaled network.  The width axis w is a BATCH-like axis for them (they are applied to (B, w, 8) after the
transpose), so they must not be classified as input, hidden or output layers of the width scaling.  The
channel MLP is the usual hidden pair (fan_in w and 4w).  The residual stream itself has width w.
"""

import torch
import torch.nn as nn

VOCAB = 64
SEQ_LEN = 8
TOKEN_HIDDEN = 32
NUM_CLASSES = 10


class MixerBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.token_mlp = nn.Sequential(nn.Linear(SEQ_LEN, TOKEN_HIDDEN), nn.GELU(), nn.Linear(TOKEN_HIDDEN, SEQ_LEN))
        self.ln2 = nn.LayerNorm(width)
        self.channel_mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x):
        x = x + self.token_mlp(self.ln1(x).transpose(1, 2)).transpose(1, 2)
        x = x + self.channel_mlp(self.ln2(x))
        return x


class Model(nn.Module):
    def __init__(self, width: int, depth: int):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, width)
        self.pos = nn.Embedding(SEQ_LEN, width)
        self.blocks = nn.ModuleList([MixerBlock(width) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, NUM_CLASSES)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x).mean(dim=1))


def build(width: int, depth: int = 2) -> nn.Module:
    return Model(width, depth)


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, VOCAB, (batch_size, SEQ_LEN), generator=g)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
    return (idx,), y
