"""HuggingFace ``Qwen2ForCausalLM`` (transformers.models.qwen2) with grouped-query attention.

Config: ``Qwen2Config(vocab_size=256, hidden_size=width, intermediate_size=4*width,
num_hidden_layers=depth, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
hidden_act="silu", rms_norm_eps=1e-6, attention_dropout=0.0, use_sliding_window=False,
tie_word_embeddings=True, use_cache=False, attn_implementation=<"sdpa" default | "eager">)``.
Sequence length 16; causal LM; next-token targets.

width -> hidden_size; intermediate = 4*width.  depth -> num_hidden_layers.
GQA: 4 query heads, 2 key/value heads (num_key_value_groups = 2); d_head = width/4 (derived).
  q_proj  nn.Linear(w, 4*d_head = w,   bias=True)
  k_proj  nn.Linear(w, 2*d_head = w/2, bias=True)     <- k/v output width is HALF the model width
  v_proj  nn.Linear(w, 2*d_head = w/2, bias=True)
  o_proj  nn.Linear(w, w, bias=False)
  (Qwen2 hard-codes bias=True on q/k/v and bias=False on o_proj.)
Each kv head serves 2 consecutive query heads: eager does ``repeat_kv`` (expand + reshape, query heads
(0,1) <- kv head 0, (2,3) <- kv head 1); sdpa on CPU/CUDA with no mask and d_head <= 256 passes
``enable_gqa=True`` to F.scaled_dot_product_attention (K/V keep 2 heads).  Under torch.export a mask is
materialised, so the exported graph uses repeat_kv (expand + reshape) and no enable_gqa.
Otherwise Llama-like: pre-norm RMSNorm (fp32), SwiGLU MLP (gate/up/down, no bias), full RoPE on q and k
(inv_freq buffer length d_head/2, theta 10000, rotate_half convention), final model.norm.
Tying: tie_word_embeddings=True (as in Qwen2-0.5B/1.5B): lm_head.weight IS model.embed_tokens.weight
  (listed once, as model.embed_tokens.weight); no lm_head bias.
Attention scale: Qwen2Attention.scaling = d_head**-0.5 -> ``scale=`` of SDPA (is_causal=True, no mask)
  or ``matmul(q, k^T) * scaling`` in eager.  No sliding window (use_sliding_window=False, all layers
  "full_attention").
Init: normal(0, 0.02) (width-independent), biases 0, RMSNorm weights 1.
Front ends: torch.fx.symbolic_trace FAILS on this model (transformers 5 has no HF fx tracer any more);
  torch.export.export(strict=False) works.  Under export the HF masking utils materialise an explicit
  attention mask (the SDPA node gets attn_mask=<expanded mask>, is_causal=False, scale=<float>), whereas a
  plain eager forward passes attn_mask=None (and is_causal=True for the causal LMs).
"""

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

VOCAB = 256
SEQ_LEN = 16


def build(width: int, depth: int = 2, attn_implementation: str = "sdpa") -> torch.nn.Module:
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=depth,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=SEQ_LEN,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        attention_dropout=0.0,
        use_sliding_window=False,
        tie_word_embeddings=True,
        use_cache=False,
        attn_implementation=attn_implementation,
    )
    return Qwen2ForCausalLM(config)


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, VOCAB, (batch_size, SEQ_LEN + 1), generator=g)
    return (seq[:, :-1].contiguous(),), seq[:, 1:].contiguous()
