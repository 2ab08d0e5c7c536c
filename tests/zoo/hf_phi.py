"""HuggingFace ``PhiForCausalLM`` (transformers.models.phi; Phi-1/Phi-2 style), tiny random-init config.

Config: ``PhiConfig(vocab_size=256, hidden_size=width, intermediate_size=4*width, num_hidden_layers=depth,
num_attention_heads=4, num_key_value_heads=4, partial_rotary_factor=0.5, max_position_embeddings=16,
hidden_act="gelu_new", layer_norm_eps=1e-5, resid_pdrop=0, embd_pdrop=0, attention_dropout=0,
qk_layernorm=False, tie_word_embeddings=False, bos/eos_token_id=0, use_cache=False,
attn_implementation=<"sdpa" default | "eager">)``.  Sequence length 16; causal LM; next-token targets.

width -> hidden_size; intermediate = 4*width.  depth -> num_hidden_layers.  4 heads -> d_head = width/4.

Structure -- PARALLEL block with ONE shared LayerNorm (GPT-J style):
  model.embed_tokens [256, w]  (embed_dropout p=0)
  model.layers.i:
      h = input_layernorm(x)                           # the only norm in the block
      x = attn(h) + mlp(h) + x                         # written ``attn_outputs + feed_forward_hidden_states + residual``
      self_attn.{q_proj,k_proj,v_proj}: separate nn.Linear(w, w, bias=True); self_attn.dense Linear(w, w, bias)
      mlp.fc1 Linear(w, 4w), gelu_new (tanh approx), mlp.fc2 Linear(4w, w)
  model.final_layernorm;  lm_head nn.Linear(w, 256, bias=TRUE) -- NOT tied (but has an output bias).
Partial RoPE: rotary_ndims = int(d_head * 0.5); the first half of each head's q/k dims is rotated
  (rotate_half inside the slice), the rest passes through; rotary dims scale with width.
  (qk_layernorm=True would add LayerNorm(d_head) on q and k; off here.)
Attention scale: PhiAttention.scaling = d_head**-0.5 -> SDPA ``scale=`` (is_causal=True, no mask) or
  ``matmul(q, k^T) * scaling`` in eager.
Init: normal(0, 0.02) (width-independent); biases 0; LayerNorm 1/0.
Front ends: torch.fx.symbolic_trace FAILS on this model (transformers 5 has no HF fx tracer any more);
  torch.export.export(strict=False) works.  Under export the HF masking utils materialise an explicit
  attention mask (the SDPA node gets attn_mask=<expanded mask>, is_causal=False, scale=<float>), whereas a
  plain eager forward passes attn_mask=None (and is_causal=True for the causal LMs).
"""

import torch
from transformers import PhiConfig, PhiForCausalLM

VOCAB = 256
SEQ_LEN = 16


def build(width: int, depth: int = 2, attn_implementation: str = "sdpa") -> torch.nn.Module:
    config = PhiConfig(
        vocab_size=VOCAB,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=depth,
        num_attention_heads=4,
        num_key_value_heads=4,
        partial_rotary_factor=0.5,
        max_position_embeddings=SEQ_LEN,
        hidden_act="gelu_new",
        layer_norm_eps=1e-5,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
        qk_layernorm=False,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        use_cache=False,
        attn_implementation=attn_implementation,
    )
    return PhiForCausalLM(config)


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, VOCAB, (batch_size, SEQ_LEN + 1), generator=g)
    return (seq[:, :-1].contiguous(),), seq[:, 1:].contiguous()
