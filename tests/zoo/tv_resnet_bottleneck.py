"""torchvision ``ResNet`` with ``Bottleneck`` blocks (torchvision.models.resnet), ResNet-50-like but short.

Config: ``ResNet(Bottleneck, layers=[depth, 1, 1, 1], num_classes=10, width_per_group=width)``
(groups=1, zero_init_residual=False).  Input 3x32x32: conv1 7x7 s2 -> 16x16, maxpool -> 8x8,
layer1 8x8, layer2 4x4, layer3 2x2, layer4 1x1; avgpool; fc.

width -> ``width_per_group``.  Bottleneck inner width = int(planes * width / 64) * groups, so the inner widths
of layer1..layer4 are width * (1, 2, 4, 8) / ... precisely: planes (64, 128, 256, 512) * width / 64.
At width 64 this is exactly ResNet-50's widths.  depth -> number of Bottlenecks in layer1.

ONLY the inner (bottleneck) widths scale.  Fixed, width-independent:
  * the stem (conv1 3->64, bn1), the residual stream / expansion channels planes*4 = 256, 512, 1024, 2048,
    the downsample 1x1 convs (+BN) on the shortcut, the fc Linear(2048, 10).
So inside every Bottleneck:
  conv1 1x1  [inner, in_planes]     fan_in FIXED,   fan_out scales   (input-like)
  conv2 3x3  [inner, inner, 3, 3]   both scale                       (hidden)
  conv3 1x1  [planes*4, inner]      fan_in scales,  fan_out FIXED    (output-like into a fixed-width stream)
  bn1/bn2 scale with width, bn3 (planes*4) is fixed.
forward: out = relu(bn1(conv1(x))); out = relu(bn2(conv2(out))); out = bn3(conv3(out));
         identity = downsample(x) if present; out += identity (in-place); relu (inplace=True).
Stride is on conv2 (ResNet v1.5).  All convs bias=False.  No attention, no tying.
Init: convs kaiming_normal fan_out/relu, BN weight 1 bias 0, fc default nn.Linear init.

COST: this is big at large width because layer4's 3x3 conv is [8w, 8w, 3, 3]:
~8.1M params at width 64, 19.7M at 128, 62M at 256, 223M at 512 (build ~2.6 s, fwd+bwd ~4.7 s on 2 CPU
cores at width 512).
"""

import torch
from torchvision.models.resnet import Bottleneck, ResNet

NUM_CLASSES = 10
IMAGE_SIZE = 32


def build(width: int, depth: int = 2) -> torch.nn.Module:
    return ResNet(Bottleneck, [depth, 1, 1, 1], num_classes=NUM_CLASSES, width_per_group=width)


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
    return (x,), y
