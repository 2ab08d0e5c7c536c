"""Traceable forms of ``torch.nn``'s attention and transformer modules.

``torch.fx`` keeps every ``torch.nn`` module as one opaque call, and ``nn.MultiheadAttention`` /
``nn.TransformerEncoderLayer`` cannot be traced through as written (fast-path checks branch on tensor
properties). An opaque call hides what a parametrization must see: the attention logits (µP's 1/d, TP5 Def. 4.1),
the residual branches (Depth-µP's L^-α), and each weight's own use. The forms below compute the same function
with traceable operations, mirroring ``F.multi_head_attention_forward`` and the layers' ``_sa_block`` /
``_ff_block``; they are checked against the modules in ``tests/test_torch_nn.py``. Configurations they do not
cover (``bias_k``/``bias_v``, ``add_zero_attn``, a custom layer subclass) stay opaque calls, as before.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import fx, nn
from torch.nn import functional as F


@fx.wrap
def _additive_mask(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, q: torch.Tensor,
                   k: torch.Tensor, heads: int, causal: bool) -> torch.Tensor | None:
    """One float mask added to the logits (B, heads, T, S), as ``F._canonical_mask`` makes them: a boolean
    mask's True entries are -inf, a float mask is added as it is; ``causal`` masks the future when no
    ``attn_mask`` is given. Runs as one call in the graph (its branches depend on the masks' dtypes)."""
    batch, target, source = q.shape[0], q.shape[-2], k.shape[-2]
    mask = None

    def additive(m: torch.Tensor) -> torch.Tensor:
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=q.dtype, device=q.device).masked_fill(m, float("-inf"))
        return m.to(q.dtype)

    if attn_mask is not None:
        mask = additive(attn_mask)
        mask = mask.view(batch, heads, target, source) if mask.dim() == 3 else mask
    elif causal:
        future = torch.ones(target, source, dtype=torch.bool, device=q.device).triu(1)
        mask = additive(future)
    if key_padding_mask is not None:
        padding = additive(key_padding_mask).view(batch, 1, 1, source)
        mask = padding if mask is None else mask + padding
    return mask


def _training(tracer: fx.Tracer) -> fx.Proxy:
    """The model's train/eval flag as a graph value, so that attention dropout follows ``model.eval()``."""
    return tracer.create_proxy("get_attr", "training", (), {})


def multihead_attention(tracer: fx.Tracer, m: nn.MultiheadAttention, query, key, value, key_padding_mask=None,
                        need_weights: bool = True, attn_mask=None, average_attn_weights: bool = True,
                        is_causal: bool = False):
    """The traceable form (dropout follows the traced graph's train/eval flag)."""
    return multihead_attention_forward(m, query, key, value, key_padding_mask, need_weights, attn_mask,
                                       average_attn_weights, is_causal, training=_training(tracer))


def multihead_attention_forward(m: nn.MultiheadAttention, query, key, value, key_padding_mask=None,
                                need_weights: bool = True, attn_mask=None, average_attn_weights: bool = True,
                                is_causal: bool = False, *, training, q_scale: float = 1.0):
    """``nn.MultiheadAttention.forward``: projections as ``F.linear`` on the module's own weights, logits
    ``q kᵀ / sqrt(d_head)`` through ``F.scaled_dot_product_attention`` (or written out when the weights are
    returned or attention dropout is on), heads merged, ``out_proj``. ``q_scale`` multiplies the query (a logit
    scale change a plan carries on the module, :class:`mupdsl.compile.hooks.ScaledAttention`)."""
    self_attention = query is key and key is value
    if not m.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    embed, heads, d_head = m.embed_dim, m.num_heads, m.head_dim
    bias = m.in_proj_bias
    if m._qkv_same_embed_dim and self_attention:
        qkv = F.linear(query, m.in_proj_weight, bias)
        q, k, v = qkv[..., :embed], qkv[..., embed:2 * embed], qkv[..., 2 * embed:]
    elif m._qkv_same_embed_dim:  # cross-attention with packed weights: each input meets its third of the output
        q = F.linear(query, m.in_proj_weight, bias)[..., :embed]
        k = F.linear(key, m.in_proj_weight, bias)[..., embed:2 * embed]
        v = F.linear(value, m.in_proj_weight, bias)[..., 2 * embed:]
    else:
        biases = (None, None, None) if bias is None else (bias[:embed], bias[embed:2 * embed], bias[2 * embed:])
        q = F.linear(query, m.q_proj_weight, biases[0])
        k = F.linear(key, m.k_proj_weight, biases[1])
        v = F.linear(value, m.v_proj_weight, biases[2])
    if q_scale != 1.0:
        q = q * q_scale
    q, k, v = (t.unflatten(-1, (heads, d_head)).transpose(1, 2) for t in (q, k, v))
    written_out = need_weights or m.dropout > 0  # SDPA applies a bare causal flag itself
    needs_mask = attn_mask is not None or key_padding_mask is not None or (is_causal and written_out)
    mask = _additive_mask(attn_mask, key_padding_mask, q, k, heads, is_causal) if needs_mask else None
    weights = None
    if written_out:
        logits = (q @ k.transpose(-2, -1)) / math.sqrt(d_head)
        if mask is not None:
            logits = logits + mask
        attention = torch.softmax(logits, dim=-1)
        if need_weights:
            weights = attention.mean(dim=1) if average_attn_weights else attention
        if m.dropout > 0:
            attention = F.dropout(attention, m.dropout, training=training)
        y = attention @ v
    else:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None)
    out = F.linear(y.transpose(1, 2).flatten(-2), m.out_proj.weight, m.out_proj.bias)
    if not m.batch_first:
        out = out.transpose(0, 1)
    return out, weights


def encoder_layer(tracer: fx.Tracer, m: nn.TransformerEncoderLayer, src, src_mask=None,
                  src_key_padding_mask=None, is_causal: bool = False):
    """``nn.TransformerEncoderLayer.forward`` without its inference fast path (pre- or post-LN blocks)."""
    x = src
    if m.norm_first:
        x = x + m._sa_block(m.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
        return x + m._ff_block(m.norm2(x))
    x = m.norm1(x + m._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
    return m.norm2(x + m._ff_block(x))


def encoder(tracer: fx.Tracer, m: nn.TransformerEncoder, src, mask=None, src_key_padding_mask=None,
            is_causal: bool | None = None):
    """``nn.TransformerEncoder.forward`` without nested tensors: the layers in turn, then the final norm."""
    out = src
    for layer in m.layers:
        out = layer(out, src_mask=mask, is_causal=bool(is_causal), src_key_padding_mask=src_key_padding_mask)
    return m.norm(out) if m.norm is not None else out


def decoder(tracer: fx.Tracer, m: nn.TransformerDecoder, tgt, memory, tgt_mask=None, memory_mask=None,
            tgt_key_padding_mask=None, memory_key_padding_mask=None, tgt_is_causal: bool | None = None,
            memory_is_causal: bool = False):
    """``nn.TransformerDecoder.forward``: the layers in turn, then the final norm."""
    out = tgt
    for layer in m.layers:
        out = layer(out, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                    tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                    tgt_is_causal=bool(tgt_is_causal), memory_is_causal=memory_is_causal)
    return m.norm(out) if m.norm is not None else out


def _plain_attention(m: nn.MultiheadAttention) -> bool:
    return m.bias_k is None and m.bias_v is None and not m.add_zero_attn


# exact type -> (traceable forward or None when the module's own forward traces, whether it is covered)
_FORMS: dict[type, tuple[Callable[..., Any] | None, Callable[[nn.Module], bool]]] = {
    nn.MultiheadAttention: (multihead_attention, _plain_attention),
    nn.TransformerEncoderLayer: (encoder_layer, lambda m: True),
    nn.TransformerEncoder: (encoder, lambda m: True),
    nn.TransformerDecoderLayer: (None, lambda m: True),
    nn.TransformerDecoder: (decoder, lambda m: True),
}


def traced_through(m: nn.Module) -> bool:
    """Whether ``m`` is a torch.nn module that tracing should enter rather than keep as one call."""
    form = _FORMS.get(type(m))
    return form is not None and form[1](m)


def traceable_forward(tracer: fx.Tracer, m: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
    """The forward to trace for ``m``: its traceable form where one is needed, else its own."""
    form = _FORMS.get(type(m))
    if form is None or form[0] is None or not form[1](m):
        return forward
    replacement = form[0]
    return lambda *args, **kwargs: replacement(tracer, m, *args, **kwargs)


def fast_path_free_forward(m: nn.Module) -> Callable[..., Any] | None:
    """For ``nn.TransformerEncoderLayer`` / ``nn.TransformerEncoder``: their forward without the inference fast
    path (which calls fused kernels on the attention weights and would bypass a plan carried on the attention
    module), as a plain function of the module's inputs; None for other modules."""
    if type(m) not in (nn.TransformerEncoderLayer, nn.TransformerEncoder):
        return None
    form = _FORMS[type(m)][0]
    return lambda *args, **kwargs: form(None, m, *args, **kwargs)
