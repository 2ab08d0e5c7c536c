"""HuggingFace ``GPT2LMHeadModel`` (transformers.models.gpt2), tiny random-init config.

Config: ``GPT2Config(vocab_size=256, n_positions=16, n_embd=width, n_layer=depth, n_head=4, n_inner=None
(-> 4*width), activation_function="gelu_new", resid_pdrop=0, embd_pdrop=0, attn_pdrop=0,
scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
tie_word_embeddings=True, bos/eos_token_id=255, use_cache=False, attn_implementation=<"sdpa" default | "eager">)``.
Sequence length 16; causal LM; targets are the next tokens.

width -> n_embd.  depth -> n_layer.  Heads fixed at 4 -> d_head = width/4.

Structure (pre-LN):
  transformer.wte [256, w], transformer.wpe [16, w]  (added)
  transformer.h.i: ln_1; attn.c_attn; attn.c_proj; ln_2; mlp.c_fc; mlp.c_proj;  transformer.ln_f
  lm_head nn.Linear(w, 256, bias=False) -- TIED: lm_head.weight IS transformer.wte.weight (same Parameter;
      named_parameters() lists it once, as transformer.wte.weight).  No output bias.
Conv1D (transformers.pytorch_utils.Conv1D), NOT nn.Linear: weight stored TRANSPOSED, shape [in, out]
  (c_attn [w, 3w], attn.c_proj [w, w], c_fc [w, 4w], mlp.c_proj [4w, w]); forward is
  ``torch.addmm(bias, x.view(-1, in), weight)``.  So fan_in is weight.shape[0], fan_out weight.shape[1].
Fused qkv: c_attn output columns [0:w] = q, [w:2w] = k, [2w:3w] = v (``.split(w, dim=2)``), each then
  ``.view(..., -1, d_head)`` -> block-stacked q|k|v, heads contiguous inside each block (NOT per-head
  interleaved as in GPT-NeoX).
Attention scale: GPT2Attention.scaling = d_head**-0.5 (scale_attn_weights=True; would be further divided by
  (layer_idx+1) if scale_attn_by_inverse_layer_idx).  sdpa: passed as ``scale=scaling`` to
  F.scaled_dot_product_attention with is_causal=True and attn_mask=None; eager: ``matmul(q, k^T) * scaling``
  then + additive causal mask.  (eager + reorder_and_upcast_attn=True would use
  ``torch.baddbmm(empty, q, k^T, beta=0, alpha=scaling)`` instead.)
Init: normal(0, 0.02) for wte/wpe/Conv1D (width-independent) -- and c_proj (attn and mlp) use
  std 0.02/sqrt(2*n_layer): a DEPTH-dependent init.  LayerNorm 1/0, biases 0.
Front ends: torch.fx.symbolic_trace FAILS on this model (transformers 5 has no HF fx tracer any more);
  torch.export.export(strict=False) works.  Under export the HF masking utils materialise an explicit
  attention mask (the SDPA node gets attn_mask=<expanded mask>, is_causal=False, scale=<float>), whereas a
  plain eager forward passes attn_mask=None (and is_causal=True for the causal LMs).
"""

import torch
from transformers import GPT2Config, GPT2LMHeadModel

VOCAB = 256
SEQ_LEN = 16


def build(width: int, depth: int = 2, attn_implementation: str = "sdpa") -> torch.nn.Module:
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=SEQ_LEN,
        n_embd=width,
        n_layer=depth,
        n_head=4,
        n_inner=None,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False,
        reorder_and_upcast_attn=False,
        tie_word_embeddings=True,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
        use_cache=False,
        attn_implementation=attn_implementation,
    )
    return GPT2LMHeadModel(config)


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, VOCAB, (batch_size, SEQ_LEN + 1), generator=g)
    return (seq[:, :-1].contiguous(),), seq[:, 1:].contiguous()
