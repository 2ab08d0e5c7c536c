"""HuggingFace ``GPTNeoXForCausalLM`` (transformers.models.gpt_neox; Pythia-style), tiny random-init config.

Config: ``GPTNeoXConfig(vocab_size=256, hidden_size=width, num_hidden_layers=depth, num_attention_heads=4,
intermediate_size=4*width, hidden_act="gelu", rotary_pct=0.25, rotary_emb_base=10000,
max_position_embeddings=16, attention_bias=True, use_parallel_residual=True, hidden_dropout=0,
attention_dropout=0, tie_word_embeddings=False, bos/eos_token_id=0, use_cache=False,
attn_implementation=<"sdpa" default | "eager">)``.  Sequence length 16; causal LM; next-token targets.
(transformers 5 turns rotary_pct/rotary_emb_base into rope_parameters["partial_rotary_factor"/"rope_theta"].)

width -> hidden_size; intermediate = 4*width.  depth -> num_hidden_layers.  4 heads -> d_head = width/4.

Structure:
  gpt_neox.embed_in [256, w]
  gpt_neox.layers.i:
      input_layernorm, post_attention_layernorm: two SEPARATE LayerNorms
      attention.query_key_value: FUSED nn.Linear(w, 3w, bias) with PER-HEAD INTERLEAVED layout:
          output is viewed as (..., heads, 3*d_head) and chunked on the last dim, so output rows are
          [q_h0 | k_h0 | v_h0 | q_h1 | k_h1 | v_h1 | ...] (each block d_head rows) -- NOT q|k|v block-stacked.
      attention.dense nn.Linear(w, w, bias)
      mlp.dense_h_to_4h Linear(w, 4w), GELU (exact), mlp.dense_4h_to_h Linear(4w, w)
      use_parallel_residual=True -> PARALLEL branches with separate norms:
          x = mlp(post_attention_layernorm(x)) + attn(input_layernorm(x)) + x
          (written as ``mlp_output + attn_output + hidden_states``)
  gpt_neox.final_layer_norm;  lm_head nn.Linear(w, 256, bias=False) -- NOT tied to embed_in.
Partial RoPE: rotary_ndims = int(d_head * 0.25) -- the FIRST quarter of every head's q/k dims is rotated
  (rotate_half within that slice), the rest passes through; rotary dims scale with width (4 at width 64,
  32 at width 512); inv_freq buffer length rotary_ndims/2.
Attention scale: GPTNeoXAttention.scaling = d_head**-0.5 -> SDPA ``scale=`` (is_causal=True, no mask) or
  ``matmul(q, k^T) * scaling`` in eager (softmax in fp32).
Init: normal(0, 0.02) (width-independent); biases 0; LayerNorm 1/0.
Front ends: torch.fx.symbolic_trace FAILS on this model (transformers 5 has no HF fx tracer any more);
  torch.export.export(strict=False) works.  Under export the HF masking utils materialise an explicit
  attention mask (the SDPA node gets attn_mask=<expanded mask>, is_causal=False, scale=<float>), whereas a
  plain eager forward passes attn_mask=None (and is_causal=True for the causal LMs).
"""

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

VOCAB = 256
SEQ_LEN = 16


def build(width: int, depth: int = 2, attn_implementation: str = "sdpa") -> torch.nn.Module:
    config = GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=4,
        intermediate_size=4 * width,
        hidden_act="gelu",
        rotary_pct=0.25,
        rotary_emb_base=10000,
        max_position_embeddings=SEQ_LEN,
        attention_bias=True,
        use_parallel_residual=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        use_cache=False,
        attn_implementation=attn_implementation,
    )
    return GPTNeoXForCausalLM(config)


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, VOCAB, (batch_size, SEQ_LEN + 1), generator=g)
    return (seq[:, :-1].contiguous(),), seq[:, 1:].contiguous()
