"""HuggingFace ``BertForMaskedLM`` (transformers.models.bert), tiny random-init config.

Config: ``BertConfig(vocab_size=256, hidden_size=width, num_hidden_layers=depth, num_attention_heads=4,
intermediate_size=4*width, max_position_embeddings=16, type_vocab_size=2, hidden_act="gelu",
hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12, use_cache=False,
attn_implementation=<"sdpa" default | "eager">)``.  Sequence length 16, batch of token ids.

width -> hidden_size; intermediate = 4*width.  depth -> num_hidden_layers.
Heads fixed at 4 -> d_head = width/4.

Structure (POST-LN, original BERT):
  bert.embeddings: word_embeddings [256, w] + token_type_embeddings [2, w] (token_type_ids default to the
      all-zero buffer) + position_embeddings [16, w], then LayerNorm, dropout.
  bert.encoder.layer.i:
      attention.self.{query,key,value}: separate nn.Linear(w, w) with bias
      attention.output.dense Linear(w, w); attention.output.LayerNorm(dense(attn) + input)   (post-LN)
      intermediate.dense Linear(w, 4w) + GELU (exact erf); output.dense Linear(4w, w);
      output.LayerNorm(dense + attention_output)                                             (post-LN)
  cls.predictions.transform: dense Linear(w, w) + GELU + LayerNorm(w)
  cls.predictions.decoder: Linear(w, 256, bias) -- weight TIED to bert.embeddings.word_embeddings.weight
      (same Parameter object; named_parameters() lists it once, as bert.embeddings.word_embeddings.weight)
      and decoder.bias tied to cls.predictions.bias (listed once, as cls.predictions.bias).
  No pooler (BertForMaskedLM builds BertModel(add_pooling_layer=False)).
Attention scale: BertSelfAttention.scaling = d_head**-0.5 (Python float), passed as ``scale=`` to
  F.scaled_dot_product_attention (sdpa) or applied AFTER the matmul as ``matmul(q, k^T) * scaling`` (eager).
  No attention mask is passed (None) -> bidirectional, no additive mask.
Width-dependent constants in forward: only that scaling.  Init: normal(0, 0.02) for Linear/Embedding
(width-independent), LayerNorm 1/0, biases 0.

Task: MLM-style -- ~15% of input positions replaced by [MASK] = 255; targets are the original tokens at
ALL positions (plain cross-entropy over every position; no -100 ignore index).
Front ends: torch.fx.symbolic_trace FAILS on this model (transformers 5 has no HF fx tracer any more);
  torch.export.export(strict=False) works.  Under export the HF masking utils materialise an explicit
  attention mask (the SDPA node gets attn_mask=<expanded mask>, is_causal=False, scale=<float>), whereas a
  plain eager forward passes attn_mask=None (and is_causal=True for the causal LMs).
"""

import torch
from transformers import BertConfig, BertForMaskedLM

VOCAB = 256
SEQ_LEN = 16
MASK_ID = VOCAB - 1


def build(width: int, depth: int = 2, attn_implementation: str = "sdpa") -> torch.nn.Module:
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=4,
        intermediate_size=4 * width,
        max_position_embeddings=SEQ_LEN,
        type_vocab_size=2,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        use_cache=False,
        attn_implementation=attn_implementation,
    )
    return BertForMaskedLM(config)


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB - 1, (batch_size, SEQ_LEN), generator=g)
    mask = torch.rand(batch_size, SEQ_LEN, generator=g) < 0.15
    inputs = tokens.masked_fill(mask, MASK_ID)
    return (inputs,), tokens
