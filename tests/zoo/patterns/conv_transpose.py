"""Pattern: a small encoder/decoder conv net with nn.ConvTranspose2d whose channels scale with width.

Model (per-pixel classification, 3x16x16 -> 16x16 labels in [0, 10); width = channel base w, depth = number of
3x3 hidden convs at the 8x8 resolution; PyTorch default init):
  stem   Conv2d(3, w, 3, stride=2, padding=1)      weight [w, 3, 3, 3]        input layer (fan_in 27 fixed)
  hidden.i Conv2d(w, w, 3, padding=1) + ReLU       weight [w, w, 3, 3]        hidden
  up     ConvTranspose2d(w, w // 2, kernel_size=2, stride=2)
                                                   weight [w, w//2, 2, 2]     hidden -- NOTE the layout
  head   Conv2d(w // 2, 10, 1)                     weight [10, w//2, 1, 1]    output layer (fan_out 10 fixed)
  forward returns head(...).permute(0, 2, 3, 1): logits (B, 16, 16, 10), classes LAST, so
  ``F.cross_entropy(logits.reshape(-1, 10), targets.reshape(-1))`` with targets (B, 16, 16).
Nonlinearity: ReLU after stem, each hidden conv and up.

Correct analysis: ConvTranspose2d stores its weight as [in_channels, out_channels // groups, kH, kW] -- the
OPPOSITE order of Conv2d.  Its input (fan_in) channel dim is weight dim 0 (= w) and its output dim is dim 1
(= w/2); both scale, so it is a hidden layer.  Beware that torch.nn.init._calculate_fan_in_and_fan_out
uses dim 1 * receptive field as "fan_in" for ANY weight, i.e. it reports w/2*4 as fan_in here (really the
fan_out); with stride 2 = kernel 2 every output pixel receives exactly in_channels * 1 contributions (each
input pixel maps to a disjoint 2x2 patch), so the effective fan_in is w (one tap per input channel), not
w*4.  A µP plan must take width-scaling dims from the module type, not from a generic fan computation.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

NUM_CLASSES = 10
IMAGE_SIZE = 16


class Model(nn.Module):
    def __init__(self, width: int, depth: int):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.hidden = nn.ModuleList([nn.Conv2d(width, width, 3, padding=1) for _ in range(depth)])
        self.up = nn.ConvTranspose2d(width, width // 2, kernel_size=2, stride=2)
        self.head = nn.Conv2d(width // 2, NUM_CLASSES, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for conv in self.hidden:
            x = F.relu(conv(x))
        x = F.relu(self.up(x))
        return self.head(x).permute(0, 2, 3, 1)


def build(width: int, depth: int = 2) -> nn.Module:
    return Model(width, depth)


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    y = torch.randint(0, NUM_CLASSES, (batch_size, IMAGE_SIZE, IMAGE_SIZE), generator=g)
    return (x,), y
