"""HuggingFace ``LlamaForCausalLM`` (transformers.models.llama), tiny random-init config.

Config: ``LlamaConfig(vocab_size=256, hidden_size=width, intermediate_size=4*width, num_hidden_layers=depth,
num_attention_heads=4, num_key_value_heads=4, head_dim=None (-> width/4), max_position_embeddings=16,
hidden_act="silu", rms_norm_eps=1e-6, attention_bias=False, mlp_bias=False, attention_dropout=0.0,
rope_theta 10000 (default rope_parameters), tie_word_embeddings=False, use_cache=False,
attn_implementation=<"sdpa" default | "eager">)``.  Sequence length 16; causal LM; next-token targets.

width -> hidden_size; intermediate_size = 4*width (real Llamas use ~8/3*width; 4x keeps it a clean
multiple).  depth -> num_hidden_layers.  4 heads, no GQA (4 kv heads) -> d_head = width/4.
(head_dim is left None so it is DERIVED from width; setting it explicitly would freeze d_head.)

Structure (pre-norm, RMSNorm):
  model.embed_tokens [256, w]
  model.layers.i: input_layernorm (RMSNorm, weight only, computed in fp32: x * rsqrt(mean(x^2)+eps) * w);
      self_attn.{q_proj,k_proj,v_proj,o_proj} separate nn.Linear(w, w, bias=False);
      post_attention_layernorm (RMSNorm);
      mlp: SwiGLU  down_proj(silu(gate_proj(x)) * up_proj(x)), gate/up [4w, w], down [w, 4w], no bias.
  model.norm (RMSNorm);  lm_head nn.Linear(w, 256, bias=False) -- NOT tied (tie_word_embeddings=False):
      separate parameter from embed_tokens.
RoPE: model.rotary_emb computes cos/sin from the non-persistent buffer inv_freq
  = 1/10000^(arange(0, d_head, 2)/d_head) -- its LENGTH (d_head/2) depends on width; applied to q and k
  (after the projections, before attention) with rotate_half (half-split, not interleaved pairs); full
  rotary (all d_head dims).
Attention scale: LlamaAttention.scaling = d_head**-0.5 -> ``scale=`` of F.scaled_dot_product_attention
  (sdpa, is_causal=True, attn_mask None) or ``matmul(q, k^T) * scaling`` (eager, + additive causal mask;
  softmax in fp32).
Init: normal(0, 0.02) for Linear/Embedding (width-independent); RMSNorm weights 1.
Front ends: torch.fx.symbolic_trace FAILS on this model (transformers 5 has no HF fx tracer any more);
  torch.export.export(strict=False) works.  Under export the HF masking utils materialise an explicit
  attention mask (the SDPA node gets attn_mask=<expanded mask>, is_causal=False, scale=<float>), whereas a
  plain eager forward passes attn_mask=None (and is_causal=True for the causal LMs).
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 256
SEQ_LEN = 16


def build(width: int, depth: int = 2, attn_implementation: str = "sdpa") -> torch.nn.Module:
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=depth,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=SEQ_LEN,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        use_cache=False,
        attn_implementation=attn_implementation,
    )
    return LlamaForCausalLM(config)


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, VOCAB, (batch_size, SEQ_LEN + 1), generator=g)
    return (seq[:, :-1].contiguous(),), seq[:, 1:].contiguous()
