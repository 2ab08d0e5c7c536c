"""timm ``VisionTransformer`` (timm.models.vision_transformer), tiny CIFAR-sized config.

Config: ``VisionTransformer(img_size=32, patch_size=8, in_chans=3, num_classes=10, global_pool="token",
embed_dim=width, depth=depth, num_heads=4, mlp_ratio=4.0, qkv_bias=True, class_token=True,
init_values=None, drop_rate=0, attn_drop_rate=0, proj_drop_rate=0, drop_path_rate=0)``.
4x4 = 16 patches + cls token = 17 tokens.

width -> embed_dim; mlp hidden = 4*width.  depth -> number of Blocks.  4 heads -> d_head = width/4.

Structure (pre-LN):
  patch_embed.proj Conv2d(3, w, k=8, s=8) (input layer, fan_in 192 fixed); cls_token [1, 1, w] (init normal
  1e-6); pos_embed [1, 17, w] (trunc_normal 0.02; cls token concatenated first, then pos_embed added).
  blocks.i: norm1 -> attn -> ls1 (nn.Identity, no layer scale since init_values=None) -> drop_path1 (Identity);
            norm2 -> mlp (fc1 Linear(w, 4w), GELU, fc2 Linear(4w, w)) -> ls2 (Identity) -> drop_path2 (Identity)
            x = x + ls1(attn(norm1(x))); x = x + ls2(mlp(norm2(x)))
  norm (final); head Linear(w, 10) on the cls token (global_pool="token"; fc_norm Identity).
  Norms are timm.layers.LayerNorm (a subclass of nn.LayerNorm, eps 1e-6, forward F.layer_norm).
attn (timm.layers.attention.Attention):
  qkv: FUSED nn.Linear(w, 3w, bias) reshaped (B, N, 3, heads, d_head) -> block-stacked q|k|v (rows [0:w]=q,
  [w:2w]=k, [2w:3w]=v; heads contiguous inside each block); q_norm/k_norm Identity; proj Linear(w, w).
  Attention path is chosen PER MODULE by the boolean attribute ``attn.fused_attn`` (set at construction
  from timm.layers.use_fused_attn(): True by default with torch >= 2.0 unless env TIMM_FUSED_ATTN=0 at import
  time, timm.layers.set_fused_attn(False) before construction, or timm's exportable mode):
  * fused (``build``, the default): ``F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=...,
    is_causal=False)`` -- NO ``scale=`` argument: the d_head**-0.5 is SDPA's implicit default.
    ``self.scale`` exists but is unused on this path.
  * non-fused (``build_nonfused``; sets attn.fused_attn = False on every Attention module after
    construction): ``q = q * self.scale; attn = q @ k.transpose(-2, -1); attn = maybe_add_mask(attn,
    resolve_self_attn_mask(...)); attn.softmax(-1); x = attn @ v`` -- the d_head**-0.5 (Python float
    ``self.scale``) is applied to q BEFORE the matmul; µP must replace it, not multiply on top.
    (``resolve_self_attn_mask`` is an fx-wrapped leaf function; with no mask it returns None.)
No tying; no width-dependent constants besides the attention scale.  Init ('' = timm default):
all nn.Linear trunc_normal std 0.02 (width-independent), biases 0; patch_embed conv default PyTorch init.
"""

import torch
from timm.layers.attention import Attention
from timm.models.vision_transformer import VisionTransformer

NUM_CLASSES = 10
IMAGE_SIZE = 32


def build(width: int, depth: int = 2) -> torch.nn.Module:
    return VisionTransformer(
        img_size=IMAGE_SIZE,
        patch_size=8,
        in_chans=3,
        num_classes=NUM_CLASSES,
        global_pool="token",
        embed_dim=width,
        depth=depth,
        num_heads=4,
        mlp_ratio=4.0,
        qkv_bias=True,
        class_token=True,
        init_values=None,
        drop_rate=0.0,
        pos_drop_rate=0.0,
        proj_drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
    )


def build_nonfused(width: int, depth: int = 2) -> torch.nn.Module:
    """Same model with every timm Attention switched to the explicit ``q * scale @ k^T`` path."""
    model = build(width, depth)
    n = 0
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_attn = False
            n += 1
    assert n == depth, n
    return model


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
    return (x,), y
