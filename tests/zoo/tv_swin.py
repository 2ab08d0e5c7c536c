"""torchvision ``SwinTransformer`` (v1; torchvision.models.swin_transformer), tiny CIFAR-sized config.

Config: ``SwinTransformer(patch_size=[4, 4], embed_dim=width, depths=[depth, 2], num_heads=[4, 8],
window_size=[4, 4], mlp_ratio=4.0, dropout=0, attention_dropout=0, stochastic_depth_prob=0.0,
num_classes=10)``.  Input 3x32x32.
  stage 0: 8x8 tokens, dim = width,   4 heads, `depth` blocks (blocks with odd index use shift 2)
  PatchMerging: LayerNorm(4w) + Linear(4w, 2w, bias=False)  (on the 2x2-concatenated features)
  stage 1: 4x4 tokens, dim = 2*width, 8 heads, 2 blocks (window 4 >= 4x4 map, so the shift is set to 0
           inside shifted_window_attention and both blocks are plain window attention)
  norm LayerNorm(2w) -> permute -> avgpool -> head Linear(2w, 10)

width -> embed_dim; stage dims are width and 2*width.  depth -> number of blocks in stage 0.
Heads fixed per stage ([4, 8]), so d_head = width/4 in BOTH stages and grows with width.
(stochastic_depth_prob is set to 0, so the StochasticDepth modules are identities; torchvision's default 0.1
would make training-mode forward random.)

Attention specifics (important for a parametrization):
  * ``attn.qkv`` = nn.Linear(dim, 3*dim) (fused; output reshaped (3, heads, d_head) -> block-stacked
    q|k|v, heads contiguous inside each block), ``attn.proj`` = nn.Linear(dim, dim).
  * The attention math lives in the free function ``shifted_window_attention``, which torchvision marks
    with ``torch.fx.wrap`` -- under torch.fx.symbolic_trace it is ONE opaque call_function node that
    receives ``self.qkv.weight`` / ``self.proj.weight`` as tensors (the qkv/proj Linear modules are never
    called as modules; their weights go through F.linear inside the function).
  * Inside it, the scale is applied to q BEFORE the matmul: ``q = q * (C // num_heads) ** -0.5;
    attn = q.matmul(k.transpose(-2, -1))`` -- d_head**-0.5 with d_head = C // num_heads (a Python int
    computed from the input shape at run time).  µP must REPLACE this factor, not multiply on top.
  * A learned relative position bias is ADDED to the logits: ``relative_position_bias_table``
    [(2*4-1)**2 = 49, heads] per block -- its shape does not depend on width; indexed by the buffer
    ``relative_position_index``.  Shifted windows add a -100 mask.
  * ``_patch_merging_pad``, ``_get_relative_position_bias`` and torchvision.ops ``stochastic_depth`` are also
    fx-wrapped leaf functions (with p=0 every StochasticDepth shows up in an fx graph as a ``stochastic_depth``
    call_function node that returns its input).
No weight tying.  Init: all nn.Linear trunc_normal std 0.02 (width-independent; this overrides the MLP's
xavier init), biases zero; relative_position_bias_table trunc_normal 0.02; the patch conv keeps PyTorch's
default init.
"""

import torch
from torchvision.models.swin_transformer import SwinTransformer

NUM_CLASSES = 10
IMAGE_SIZE = 32


def build(width: int, depth: int = 2) -> torch.nn.Module:
    return SwinTransformer(
        patch_size=[4, 4],
        embed_dim=width,
        depths=[depth, 2],
        num_heads=[4, 8],
        window_size=[4, 4],
        mlp_ratio=4.0,
        dropout=0.0,
        attention_dropout=0.0,
        stochastic_depth_prob=0.0,
        num_classes=NUM_CLASSES,
    )


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
    return (x,), y
