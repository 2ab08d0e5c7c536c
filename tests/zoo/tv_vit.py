"""torchvision ``VisionTransformer`` (torchvision.models.vision_transformer), tiny CIFAR-sized config.

Config: ``VisionTransformer(image_size=32, patch_size=8, num_layers=depth, num_heads=4,
hidden_dim=width, mlp_dim=4*width, num_classes=10)``, dropout 0, attention_dropout 0.
Input 3x32x32 -> 4x4 = 16 patches + 1 class token = 17 tokens.

width -> hidden_dim (d_model); mlp_dim = 4*width.  depth -> num_layers (EncoderBlocks).
Heads fixed at 4, so d_head = width/4 grows with width.

Structure (pre-LN):
  conv_proj  Conv2d(3, width, k=8, s=8)                         (input layer: fan_in 3*8*8 fixed)
  class_token  Parameter [1, 1, width] (zeros)                  (input-like vector)
  encoder.pos_embedding  Parameter [1, 17, width] (std 0.02)     (input-like, added)
  encoder.layers.encoder_layer_i:
      ln_1 LayerNorm(eps 1e-6); self_attention = nn.MultiheadAttention(width, 4, batch_first=True)
      x = x + attn(ln_1(x));   y = x + mlp(ln_2(x))
      mlp = torchvision MLP (Sequential: 0 Linear(w,4w), 1 GELU, 2 Dropout, 3 Linear(4w,w), 4 Dropout)
  encoder.ln  final LayerNorm
  heads.head  Linear(width, 10)  -- ZERO-initialised (weight and bias) by torchvision.
  Readout takes the class token only: x[:, 0].

Attention specifics (important for a parametrization):
  * nn.MultiheadAttention stores a FUSED in-projection ``in_proj_weight`` [3w, w] / ``in_proj_bias`` [3w]:
    rows [0:w] = q, [w:2w] = k, [2w:3w] = v (block-stacked, NOT per-head interleaved); inside each block
    heads are contiguous chunks of d_head rows.  ``out_proj`` is a NonDynamicallyQuantizableLinear(w, w).
    The q/k/v projection is NOT an nn.Linear submodule: it is F.linear on a parameter inside
    F.multi_head_attention_forward (``_in_projection_packed``), i.e. the weights are used functionally.
  * The attention scale is implicit: F.multi_head_attention_forward calls
    F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal) WITHOUT ``scale=``, so the
    default d_head**-0.5 is applied inside SDPA.  (With need_weights=True it would instead pre-scale q by
    sqrt(1/d_head) and use baddbmm/bmm; torchvision passes need_weights=False.)
  * In eval mode under torch.no_grad() nn.MultiheadAttention takes the fused "fast path"
    torch._native_multi_head_attention (an opaque op); in training mode or with grad enabled it does not.
  * torch.fx.symbolic_trace treats nn.MultiheadAttention as a LEAF module (one call_module node per block:
    in_proj, the implicit scale and out_proj are all hidden inside it); torch.export decomposes it
    (linear on in_proj_weight, aten.scaled_dot_product_attention with no scale, linear on out_proj).
No weight tying.  No width-dependent constants in forward besides the implicit SDPA scale.
Init: torchvision's own (MLP Linear xavier_uniform, bias normal 1e-6; MHA xavier_uniform in_proj,
out_proj default nn.Linear init with zero bias; conv_proj trunc_normal std sqrt(1/fan_in)).
"""

import torch
from torchvision.models.vision_transformer import VisionTransformer

NUM_CLASSES = 10
IMAGE_SIZE = 32


def build(width: int, depth: int = 2) -> torch.nn.Module:
    return VisionTransformer(
        image_size=IMAGE_SIZE,
        patch_size=8,
        num_layers=depth,
        num_heads=4,
        hidden_dim=width,
        mlp_dim=4 * width,
        dropout=0.0,
        attention_dropout=0.0,
        num_classes=NUM_CLASSES,
    )


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
    return (x,), y
