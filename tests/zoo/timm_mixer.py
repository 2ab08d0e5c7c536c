"""timm ``MlpMixer`` (timm.models.mlp_mixer), tiny CIFAR-sized config.

Config: ``MlpMixer(num_classes=10, img_size=32, in_chans=3, patch_size=8, num_blocks=depth, embed_dim=width,
mlp_ratio=(0.5, 4.0), drop_rate=0, proj_drop_rate=0, drop_path_rate=0, stem_norm=False, global_pool="avg")``.
4x4 = 16 tokens (patches), no class token.

width -> embed_dim (channels).  depth -> num_blocks.  No attention.

Structure:
  stem.proj Conv2d(3, w, k=8, s=8) (input layer, fan_in 192 fixed) -> flatten to (B, 16, w)
  blocks.i (MixerBlock):
      x = x + mlp_tokens(norm1(x).transpose(1, 2)).transpose(1, 2)     # TOKEN mixing, applied along the
                                                                       # 16-token axis, once per channel
      x = x + mlp_channels(norm2(x))                                  # channel MLP: Linear(w, 4w), GELU, Linear(4w, w)
      norm1/norm2 nn.LayerNorm(w, eps 1e-6) (over channels)
  norm (final LayerNorm); mean over tokens; head Linear(w, 10) -- ZERO-initialised (weight 0, bias 0).

Token-mixing MLP (timm.layers.Mlp, mlp_tokens.fc1 / fc2):
  ``build``: timm's own sizing tokens_dim = int(0.5 * embed_dim) -> it SCALES with width:
      mlp_tokens.fc1 = Linear(16, w/2)   fan_in 16 FIXED (the number of tokens), fan_out scales
      mlp_tokens.fc2 = Linear(w/2, 16)   fan_in scales, fan_out 16 FIXED
      (so despite being a "hidden" layer of the block it looks like input/output layers by shape; the
      width-scaling channel axis is the BATCH-like axis of these Linears after the transpose).
  ``build_fixed_tokens``: tokens_dim pinned to 32 at every width (mlp_ratio[0] = 32.5/width, timm takes
      int(ratio*width)):
      mlp_tokens.fc1 = Linear(16, 32), mlp_tokens.fc2 = Linear(32, 16) -- NO width-dependent dim at all;
      these Linears do not scale with width but act on a (B, w, 16) tensor.
No tying, no width-dependent constants in forward.  Init (timm mixer '_init_weights', non-flax): Linear
xavier_uniform (biases in 'mlp' layers normal 1e-6, else 0); stem conv lecun_normal; head zeros.
"""

import torch
from timm.models.mlp_mixer import MlpMixer

NUM_CLASSES = 10
IMAGE_SIZE = 32
FIXED_TOKENS_HIDDEN = 32


def _mixer(width: int, depth: int, token_ratio: float) -> torch.nn.Module:
    return MlpMixer(
        num_classes=NUM_CLASSES,
        img_size=IMAGE_SIZE,
        in_chans=3,
        patch_size=8,
        num_blocks=depth,
        embed_dim=width,
        mlp_ratio=(token_ratio, 4.0),
        drop_rate=0.0,
        proj_drop_rate=0.0,
        drop_path_rate=0.0,
        stem_norm=False,
        global_pool="avg",
    )


def build(width: int, depth: int = 2) -> torch.nn.Module:
    return _mixer(width, depth, 0.5)


def build_fixed_tokens(width: int, depth: int = 2) -> torch.nn.Module:
    """Variant whose token-mixing MLP hidden size is 32 at every width."""
    model = _mixer(width, depth, (FIXED_TOKENS_HIDDEN + 0.5) / width)
    assert model.blocks[0].mlp_tokens.fc1.out_features == FIXED_TOKENS_HIDDEN
    return model


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
    return (x,), y
