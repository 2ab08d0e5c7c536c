"""HuggingFace ``ViTForImageClassification`` (transformers.models.vit), tiny CIFAR-sized config.

Config: ``ViTConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=4,
intermediate_size=4*width, hidden_act="gelu", image_size=32, patch_size=8, num_channels=3, qkv_bias=True,
hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12, num_labels=10,
attn_implementation=<"sdpa" default | "eager">)``.  4x4 = 16 patches + CLS = 17 tokens.

width -> hidden_size; intermediate = 4*width.  depth -> num_hidden_layers.  4 heads -> d_head = width/4.

Structure (pre-LN):
  vit.embeddings.cls_token [1, 1, w] (Parameter), vit.embeddings.position_embeddings [1, 17, w] (Parameter,
      added), vit.embeddings.patch_embeddings.projection Conv2d(3, w, k=8, s=8)  (input layer, fan_in 192 fixed)
  vit.layers.i (transformers 5 layout): layernorm_before; attention.{q_proj,k_proj,v_proj} separate
      nn.Linear(w, w, bias); attention.o_proj Linear(w, w, bias); layernorm_after; mlp.fc1 Linear(w, 4w) + GELU;
      mlp.fc2 Linear(4w, w).  x = x + attn(ln_before(x)); x = x + mlp(ln_after(x)).
  vit.layernorm (final);  no pooler (ViTForImageClassification uses add_pooling_layer=False);
  classifier nn.Linear(w, 10) applied to the CLS token (sequence_output[:, 0, :]).
Attention scale: ViTAttention.scaling = d_head**-0.5 -> SDPA ``scale=`` (no mask, not causal) or
  ``matmul(q, k^T) * scaling`` in eager (softmax in fp32).
No tying.  Init: Linear/Conv2d normal(0, 0.02) (width-independent), cls_token / position_embeddings
  trunc_normal std 0.02, LayerNorm 1/0, biases 0.
Front ends: torch.fx.symbolic_trace FAILS on this model (transformers 5 has no HF fx tracer any more);
  torch.export.export(strict=False) works.  Under export the HF masking utils materialise an explicit
  attention mask (the SDPA node gets attn_mask=<expanded mask>, is_causal=False, scale=<float>), whereas a
  plain eager forward passes attn_mask=None (and is_causal=True for the causal LMs).
"""

import torch
from transformers import ViTConfig, ViTForImageClassification

NUM_CLASSES = 10
IMAGE_SIZE = 32


def build(width: int, depth: int = 2, attn_implementation: str = "sdpa") -> torch.nn.Module:
    config = ViTConfig(
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=4,
        intermediate_size=4 * width,
        hidden_act="gelu",
        image_size=IMAGE_SIZE,
        patch_size=8,
        num_channels=3,
        qkv_bias=True,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=NUM_CLASSES,
        attn_implementation=attn_implementation,
    )
    return ViTForImageClassification(config)


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
    return (x,), y
