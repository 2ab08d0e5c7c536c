"""torchvision ``MobileNetV2`` (torchvision.models.mobilenetv2) with a shortened block list.

Config: ``MobileNetV2(num_classes=10, width_mult=width/64, dropout=0.0, round_nearest=8,
inverted_residual_setting=[[1, 16, 1, 1], [6, 24, depth, 2], [6, 32, 2, 2], [6, 64, 1, 2]])``
(rows are t=expansion, c=channels, n=repeats, s=stride of the first repeat).  Input 3x32x32:
stem stride 2 -> 16x16, then 16x16, 8x8, 4x4, 2x2; global avg pool; classifier.

width -> width_mult = width / 64 (width 64 == the standard width_mult 1.0 channel counts).
depth -> repeats of the 24-channel stage (first repeat stride 2, the others stride 1 WITH a residual
         connection ``x + self.conv(x)``, since inp == oup).

Which channels scale (torchvision code):
  * every block channel count c and the stem's 32 channels: ``_make_divisible(c * width_mult, 8)`` =
    max(8, int(v + 4) // 8 * 8), bumped up by 8 if that rounded down by more than 10%.  For width a multiple
    of 64 (64/128/256/512 -> mult 1/2/4/8) all counts here are exact multiples: c * width/64.  For other widths
    the rounding makes channels NOT exactly proportional (e.g. width 96 -> mult 1.5: 24*1.5=36 -> 40).
  * expansion ("hidden") width inside a block: int(round(inp * t)) -- proportional to the (already rounded)
    input channels.
  * last conv: ``last_channel = _make_divisible(1280 * max(1.0, width_mult), 8)`` -> 1280 at width <= 64,
    then proportional above 64 (2560 at 128, 10240 at 512).  So BELOW the base width this layer does not scale.
  * fixed: the stem conv's input (3 RGB channels), the classifier's 10 outputs.
Depthwise convs: each block has Conv2d(h, h, 3, groups=h) (weight [h, 1, 3, 3], fan_in 9 independent of
width).  All convs have bias=False and are followed by BatchNorm2d; activations ReLU6.
Blocks with expand_ratio 1 (the first) have no 1x1 expansion conv, so module indices inside ``conv``
differ between block kinds (features.1.conv.0 is the depthwise conv there).
No attention, no tying.  Init: convs kaiming_normal fan_out; Linear normal(0, 0.01); BN weight 1 bias 0.
"""

import torch
from torchvision.models.mobilenetv2 import MobileNetV2

NUM_CLASSES = 10
IMAGE_SIZE = 32
BASE_WIDTH = 64


def build(width: int, depth: int = 2) -> torch.nn.Module:
    setting = [
        # t, c, n, s
        [1, 16, 1, 1],
        [6, 24, depth, 2],
        [6, 32, 2, 2],
        [6, 64, 1, 2],
    ]
    return MobileNetV2(
        num_classes=NUM_CLASSES,
        width_mult=width / BASE_WIDTH,
        inverted_residual_setting=setting,
        round_nearest=8,
        dropout=0.0,
    )


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
    return (x,), y
