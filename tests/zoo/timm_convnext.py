"""timm ``ConvNeXt`` (timm.models.convnext; v1 with layer scale), tiny CIFAR-sized config.

Config: ``ConvNeXt(in_chans=3, num_classes=10, depths=(depth, 1, 1, 1), dims=(width, width, 2*width, 2*width),
kernel_sizes=7, ls_init_value=1e-6, stem_type="patch", patch_size=4, conv_mlp=False, conv_bias=True,
use_grn=False, head_init_scale=1.0, drop_rate=0, drop_path_rate=0)``.
timm ConvNeXt always has 4 stages; input 3x32x32: stem -> 8x8, stages at 8x8, 4x4, 2x2, 1x1.

width -> channel base (stage dims w, w, 2w, 2w -- kept at most 2w so width 512 stays small).
depth -> number of blocks in stage 0 (stages 1-3 have one block each).

Structure:
  stem: Sequential(Conv2d(3, w, k=4, s=4, bias), LayerNorm2d(w))
  stages.k.downsample: nn.Identity for stage 0; for stages 1-3 Sequential(LayerNorm2d(in), Conv2d(in, out, k=2, s=2))
  stages.k.blocks.j (ConvNeXtBlock), all with in_chs == out_chs and stride 1 inside a stage:
      shortcut = x
      x = conv_dw(x)                    # nn.Conv2d(d, d, 7, padding=3, groups=d): DEPTHWISE, weight [d, 1, 7, 7]
      x = x.permute(0, 2, 3, 1); x = norm(x)   # timm LayerNorm (channels-last, eps 1e-6)
      x = mlp(x)                        # timm Mlp: fc1 nn.Linear(d, 4d), GELU, fc2 nn.Linear(4d, d)
      x = x.permute(0, 3, 1, 2)
      x = x.mul(self.gamma.reshape(1, -1, 1, 1))   # LAYER SCALE: gamma = Parameter [d], init 1e-6
      x = self.drop_path(x) + self.shortcut(shortcut)   # drop_path and shortcut are both nn.Identity modules
  head (NormMlpClassifierHead): global_pool (avg) -> head.norm LayerNorm2d(2w) -> flatten -> head.pre_logits
      (Identity) -> head.drop -> head.fc Linear(2w, 10).
  (In stages 1-3 the downsample conv is a width->width (or w->2w) hidden layer with fan_in 4*in.)
No attention, no tying, no width-dependent constants in forward.
Init: Conv2d / Linear trunc_normal std 0.02 (width-independent), biases 0; head.fc multiplied by
head_init_scale (1.0 here); gamma = 1e-6.
"""

import torch
from timm.models.convnext import ConvNeXt

NUM_CLASSES = 10
IMAGE_SIZE = 32


def build(width: int, depth: int = 2) -> torch.nn.Module:
    return ConvNeXt(
        in_chans=3,
        num_classes=NUM_CLASSES,
        depths=(depth, 1, 1, 1),
        dims=(width, width, 2 * width, 2 * width),
        kernel_sizes=7,
        ls_init_value=1e-6,
        stem_type="patch",
        patch_size=4,
        conv_mlp=False,
        conv_bias=True,
        use_grn=False,
        head_init_scale=1.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
    )


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
    return (x,), y
