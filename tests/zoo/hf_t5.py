"""HuggingFace ``T5ForConditionalGeneration`` (transformers.models.t5; original T5 v1.0 flavour).

Config: ``T5Config(vocab_size=256, d_model=width, d_kv=width//4, d_ff=4*width, num_layers=depth,
num_decoder_layers=depth, num_heads=4, relative_attention_num_buckets=32, relative_attention_max_distance=128,
dropout_rate=0.0, layer_norm_epsilon=1e-6, feed_forward_proj="relu", pad_token_id=0, eos_token_id=1,
decoder_start_token_id=0, use_cache=False, attn_implementation=<"sdpa" default | "eager">)``;
tie_word_embeddings is NOT passed (see below).  Encoder length 16, decoder length 16.

Inputs are positional ``(input_ids, attention_mask, decoder_input_ids)`` -- this matches the first three
parameters of T5ForConditionalGeneration.forward(input_ids, attention_mask, decoder_input_ids, ...).
attention_mask is all ones except the last 2 encoder positions of every odd batch row (padding), so the
mask path is exercised.  decoder_input_ids = labels shifted right with decoder_start_token_id 0; targets =
labels.  The padded encoder positions only affect what the decoder can attend to.

width -> d_model; d_kv = width/4 (T5's default d_kv=64 is width-independent -- we set it explicitly so that
inner_dim = heads*d_kv = width and d_head grows); d_ff = 4*width.  depth -> num_layers (encoder) AND
num_decoder_layers (decoder), i.e. 2*depth blocks in all.  Heads fixed at 4.

Structure (pre-norm, T5LayerNorm = RMSNorm without mean subtraction/bias):
  shared: nn.Embedding(256, w) -- the ONE embedding matrix: encoder.embed_tokens, decoder.embed_tokens and
      lm_head.weight are all the same Parameter (named_parameters() lists it once, as shared.weight).
  encoder.block.i.layer.0 = SelfAttention (q, k, v, o: nn.Linear, bias=False, q/k/v [w, w], o [w, w]);
      layer.1 = T5LayerFF (DenseReluDense.wi [4w, w], .wo [w, 4w], ReLU, no bias).
  decoder.block.i.layer.0 = causal SelfAttention, layer.1 = EncDecAttention (cross-attn on the encoder output),
      layer.2 = FF.  encoder.final_layer_norm / decoder.final_layer_norm.
  Relative position bias: ONLY block 0 of each stack owns ``relative_attention_bias`` = nn.Embedding(32, 4)
      (buckets x heads; shape independent of width); the bias it produces is passed on and re-used by all
      later blocks of that stack.  Cross-attention has no relative bias (zeros).  The bias is added to
      the logits (sdpa: folded into a float attn_mask).
Attention scale: NONE.  T5Attention.scaling = 1.0 -- logits are q.k^T with no 1/sqrt(d) (Mesh-TF folds it
  into the init of q instead: q.weight std = (d_model*d_kv)**-0.5).  sdpa is called with ``scale=1.0``;
  eager computes ``matmul(q, k^T) * 1.0 + position_bias``.
Width-dependent constant in forward: with tied embeddings T5 scales the decoder output by
  ``d_model**-0.5`` BEFORE the tied lm_head: ``sequence_output * (self.model_dim ** -0.5)``, model_dim = width
  (a Python float baked at build).  In transformers 5 this is controlled by config.scale_decoder_outputs,
  which is True unless the config was created with tie_word_embeddings=False (T5 v1.1 style); the weights
  are ALWAYS tied in transformers 5 (config.tie_word_embeddings is forced to True).
Init (width-DEPENDENT, T5 style): shared normal(0, 1.0); q normal std (d_model*d_kv)**-0.5; k, v
  d_model**-0.5; o (heads*d_kv)**-0.5; wi d_model**-0.5; wo d_ff**-0.5; relative_attention_bias
  d_model**-0.5; layer norms 1.
Front ends: torch.fx.symbolic_trace FAILS (no HF fx tracer in transformers 5); torch.export(strict=False)
  works; every SDPA call carries the relative-position bias (+ padding / causal mask) as a float attn_mask.
"""

import torch
from transformers import T5Config, T5ForConditionalGeneration

VOCAB = 256
SEQ_LEN = 16


def build(width: int, depth: int = 2, attn_implementation: str = "sdpa") -> torch.nn.Module:
    config = T5Config(
        vocab_size=VOCAB,
        d_model=width,
        d_kv=width // 4,
        d_ff=4 * width,
        num_layers=depth,
        num_decoder_layers=depth,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
        feed_forward_proj="relu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        use_cache=False,
        attn_implementation=attn_implementation,
    )
    return T5ForConditionalGeneration(config)


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(2, VOCAB, (batch_size, SEQ_LEN), generator=g)
    attention_mask = torch.ones(batch_size, SEQ_LEN, dtype=torch.long)
    attention_mask[1::2, -2:] = 0
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    labels = torch.randint(2, VOCAB, (batch_size, SEQ_LEN), generator=g)
    decoder_input_ids = torch.zeros_like(labels)
    decoder_input_ids[:, 1:] = labels[:, :-1]
    return (input_ids, attention_mask, decoder_input_ids), labels
