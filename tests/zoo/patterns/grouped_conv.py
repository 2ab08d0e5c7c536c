"""Pattern: grouped conv with a FIXED number of groups plus a DEPTHWISE conv, channels scaling with width.

Model (image classification, 3x16x16 -> 10 classes; width = channels w, depth = number of residual blocks;
PyTorch default init):
  stem  Conv2d(3, w, 3, stride=2, padding=1)                   input layer (fan_in 27 fixed)       -> 8x8
  blocks.i:
      y = gelu(gconv(x))     gconv  = Conv2d(w, w, 3, padding=1, groups=4)   weight [w, w/4, 3, 3]
      y = gelu(dwconv(y))    dwconv = Conv2d(w, w, 3, padding=1, groups=w)   weight [w, 1, 3, 3]
      y = pw(y)              pw     = Conv2d(w, w, 1)                          weight [w, w, 1, 1]
      x = x + y
  global average pool -> head nn.Linear(w, 10)
Inputs: images (B, 3, 16, 16); targets: class ids (B,).

Correct analysis:
  * gconv (groups fixed at 4): each output channel sees in_channels/groups * 3 * 3 = (w/4)*9 inputs, so its
    fan_in GROWS with width and its fan_out (w) grows too -> an ordinary hidden layer; weight dim 1 is
    in/groups (w/4), not w.  Its µP fan_in is w/4*9 (ratio to base = w/base, same as a dense conv).
  * dwconv (groups = w, depthwise): weight [w, 1, 3, 3]; each output channel sees ONE input channel * 9 taps,
    so fan_in = 9 is width-INDEPENDENT while the number of channels grows: it behaves like a per-channel
    (vector-like) parameter / an input-like layer (fixed fan_in, growing fan_out), NOT like a hidden matrix.
    Its groups attribute changes with width (groups == w), which a plan must not treat as a fixed constant.
  * pw (1x1) is a hidden matrix; stem is the input layer; head the output layer.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

NUM_CLASSES = 10
IMAGE_SIZE = 16
GROUPS = 4


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.gconv = nn.Conv2d(width, width, 3, padding=1, groups=GROUPS)
        self.dwconv = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.pw = nn.Conv2d(width, width, 1)

    def forward(self, x):
        y = F.gelu(self.gconv(x))
        y = F.gelu(self.dwconv(y))
        y = self.pw(y)
        return x + y


class Model(nn.Module):
    def __init__(self, width: int, depth: int):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList([Block(width) for _ in range(depth)])
        self.head = nn.Linear(width, NUM_CLASSES)

    def forward(self, x):
        x = self.stem(x)
        for blk in self.blocks:
            x = blk(x)
        return self.head(x.mean(dim=(2, 3)))


def build(width: int, depth: int = 2) -> nn.Module:
    return Model(width, depth)


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
    return (x,), y
