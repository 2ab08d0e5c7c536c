"""torchvision ``ConvNeXt`` (torchvision.models.convnext), tiny CIFAR-sized config.

Config: ``ConvNeXt(block_setting=[CNBlockConfig(width, 2*width, depth), CNBlockConfig(2*width, None, 1)],
stochastic_depth_prob=0.0, layer_scale=1e-6, num_classes=10)``.  Input 3x32x32.
  features.0  stem: Conv2d(3, w, k=4, s=4, bias) + LayerNorm2d(w)         -> 8x8
  features.1  `depth` CNBlocks at dim w
  features.2  downsample: LayerNorm2d(w) + Conv2d(w, 2w, k=2, s=2)          -> 4x4
  features.3  1 CNBlock at dim 2w
  avgpool; classifier = Sequential(LayerNorm2d(2w), Flatten, Linear(2w, 10))

width -> channels of stage 0 (stage 1 has 2*width).  depth -> number of CNBlocks in stage 0.

CNBlock (the part that matters):
  block = Sequential(Conv2d(d, d, 7, padding=3, groups=d)   # DEPTHWISE conv: weight [d, 1, 7, 7], fan_in 49 fixed
                     Permute(NCHW->NHWC), LayerNorm(d, eps 1e-6),
                     Linear(d, 4d), GELU, Linear(4d, d), Permute(NHWC->NCHW))
  layer_scale = Parameter [d, 1, 1] initialised to 1e-6 (learnable per-channel LAYER SCALE)
  forward: result = self.layer_scale * self.block(input); result = stochastic_depth(result);
           result += input          # in-place residual add
  (stochastic_depth_prob = 0 -> StochasticDepth is an identity; the torchvision.ops function
  ``stochastic_depth`` is fx-wrapped, so in an fx graph it is a call_function node returning its input.)
No attention, no weight tying, no width-dependent constants in forward.
Init: Conv2d/Linear trunc_normal std 0.02 (width-independent), biases zero.
"""

import torch
from torchvision.models.convnext import CNBlockConfig, ConvNeXt

NUM_CLASSES = 10
IMAGE_SIZE = 32


def build(width: int, depth: int = 2) -> torch.nn.Module:
    setting = [CNBlockConfig(width, 2 * width, depth), CNBlockConfig(2 * width, None, 1)]
    return ConvNeXt(setting, stochastic_depth_prob=0.0, layer_scale=1e-6, num_classes=NUM_CLASSES)


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
    return (x,), y
