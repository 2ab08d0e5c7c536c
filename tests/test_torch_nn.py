"""torch.nn's attention and transformer modules are traced through (mupdsl/compile/torch_nn.py): the traced
graph computes what the module computes, and the compiler then sees their attention logits, residual branches
and weights."""

import pytest
import torch
from torch import nn

from mupdsl.compile import compile_model
from mupdsl.compile.trace import trace
from mupdsl.measure import coordcheck

E, HEADS, T, S, B = 16, 4, 5, 7, 3


def _same(model: nn.Module, *inputs, **kwargs):
    traced = trace(model).graph_module
    assert traced.graph is not None
    for mode in (True, False):
        model.train(mode), traced.train(mode)
        expected, got = model(*inputs, **kwargs), traced(*inputs, **kwargs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = got if isinstance(got, tuple) else (got,)
        for e, g in zip(expected, got):
            if e is None:
                assert g is None
            else:
                torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)
    return traced


def _calls_module(traced, kind) -> bool:
    return any(n.op == "call_module" and isinstance(traced.get_submodule(n.target), kind) for n in traced.graph.nodes)


class Wrap(nn.Module):
    """``call(inner, x)`` as a model (fx traces fixed signatures only: no ``*args``)."""

    def __init__(self, inner, call):
        super().__init__()
        self.inner, self.call = inner, call

    def forward(self, x):
        return self.call(self.inner, x)


class Wrap2(Wrap):
    def forward(self, x, y):
        return self.call(self.inner, x, y)


class Wrap3(Wrap):
    def forward(self, x, y, z):
        return self.call(self.inner, x, y, z)


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("mask", ["none", "bool", "float", "padding", "both", "causal"])
def test_multihead_self_attention(batch_first, need_weights, mask):
    mha = nn.MultiheadAttention(E, HEADS, batch_first=batch_first)
    x = torch.randn(B, T, E) if batch_first else torch.randn(T, B, E)
    attn_mask = {"bool": torch.rand(T, T) > 0.7, "float": torch.randn(T, T),
                 "both": torch.randn(B * HEADS, T, T)}.get(mask)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask.fill_diagonal_(False)  # no fully masked rows: both sides would give NaN
    padding = torch.zeros(B, T, dtype=torch.bool).index_fill_(1, torch.tensor([T - 1]), True) \
        if mask in ("padding", "both") else None
    causal = nn.Transformer.generate_square_subsequent_mask(T) if mask == "causal" else None

    def call(m, x):
        return m(x, x, x, need_weights=need_weights, key_padding_mask=padding,
                 attn_mask=causal if causal is not None else attn_mask, is_causal=causal is not None)

    traced = _same(Wrap(mha, call), x)
    assert not _calls_module(traced, nn.MultiheadAttention)


@pytest.mark.parametrize("packed", [True, False])
def test_multihead_cross_attention_and_dropout(packed):
    mha = nn.MultiheadAttention(E, HEADS, batch_first=True, dropout=0.3,
                                kdim=None if packed else 12, vdim=None if packed else 10)
    q, k, v = torch.randn(B, T, E), torch.randn(B, S, E if packed else 12), torch.randn(B, S, E if packed else 10)
    model = Wrap3(mha, lambda m, q, k, v: m(q, k, v, need_weights=False)[0]).eval()
    traced = trace(model).graph_module.eval()
    torch.testing.assert_close(traced(q, k, v), model(q, k, v), rtol=1e-10, atol=1e-10)
    traced.train()   # attention dropout follows the graph module's mode
    assert not torch.allclose(traced(q, k, v), model(q, k, v))


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_and_decoder(norm_first, activation):
    layer = nn.TransformerEncoderLayer(E, HEADS, 32, dropout=0.0, activation=activation, batch_first=True,
                                       norm_first=norm_first)
    encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(E), enable_nested_tensor=False)
    x = torch.randn(B, T, E)
    causal = nn.Transformer.generate_square_subsequent_mask(T)
    traced = _same(Wrap(encoder, lambda m, x: m(x, mask=causal, is_causal=True)), x)
    assert not _calls_module(traced, (nn.TransformerEncoderLayer, nn.MultiheadAttention))
    dec_layer = nn.TransformerDecoderLayer(E, HEADS, 32, dropout=0.0, batch_first=True, norm_first=norm_first)
    decoder = nn.TransformerDecoder(dec_layer, 2)
    memory = torch.randn(B, S, E)
    traced = _same(Wrap2(decoder, lambda m, x, mem: m(x, mem, tgt_mask=causal, tgt_is_causal=True)), x, memory)
    assert not _calls_module(traced, (nn.TransformerDecoderLayer, nn.MultiheadAttention))


def test_unsupported_configuration_stays_one_call():
    mha = nn.MultiheadAttention(E, HEADS, add_bias_kv=True, batch_first=True)
    x = torch.randn(B, T, E)
    traced = _same(Wrap(mha, lambda m, x: m(x, x, x)[0]), x)
    assert _calls_module(traced, nn.MultiheadAttention)


VOCAB = 32


class TinyEncoderLM(nn.Module):
    """Token embedding tied to the readout, nn.TransformerEncoder (pre-LN) in between: d_head grows with width."""

    def __init__(self, width: int, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        nn.init.normal_(self.embed.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(width, 2, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(width), enable_nested_tensor=False)
        self.head = nn.Linear(width, VOCAB, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, idx):
        mask = nn.Transformer.generate_square_subsequent_mask(idx.shape[1], device=idx.device)
        return self.head(self.encoder(self.embed(idx), mask=mask, is_causal=True))


def tiny_lm(width: int, depth: int = 2) -> nn.Module:
    return TinyEncoderLM(width, depth)


def test_plan_sees_attention_blocks_and_weights():
    torch.set_default_dtype(torch.float32)
    compiled = compile_model("depth_mup_k1", f"{__file__}:tiny_lm", width=64, base_width=32, depth=4, base_depth=2)
    plan = compiled.plan
    assert len(plan.attention) == 4
    assert all(a.d_head == 32 and a.base_d_head == 16 for a in plan.attention)
    assert len(plan.residual_blocks) == 8                 # attention and MLP branch of every layer
    roles = {t.name: t.role for t in plan.tensors}
    assert roles["encoder.layers.0.self_attn.in_proj_weight"] == "hidden"
    assert roles["encoder.layers.3.linear2.weight"] == "hidden"
    assert not any(t.module_level for t in plan.tensors)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_coordcheck_verdicts_on_torch_transformer(optimizer):
    torch.set_default_dtype(torch.float32)
    kwargs = dict(widths=(32, 64, 128, 256), seeds=2, batch_size=8, optimizer=optimizer)
    example = f"{__file__}:tiny_lm"
    assert coordcheck("mup", example, **kwargs).verdict == "PASS"
    assert coordcheck("sp", example, **kwargs).verdict == "FAIL"
    assert coordcheck("ntp", example, **kwargs).verdict == "FAIL"


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, VOCAB, (batch_size, 9), generator=g)
    return idx[:, :-1], idx[:, 1:]
