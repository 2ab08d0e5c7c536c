"""Ways of writing the same network (tests/zoo/patterns/, each file's docstring states the correct analysis): the
model's own attention scale found wherever it is applied and replaced, not multiplied on top; einsum, baddbmm,
where-masks and soft-caps; parallel blocks; branches whose weights do not scale; readouts through transposes and
casts; transposed and grouped convolutions; width-dependent constants; layer scales and query norms.

Every compile checks itself (the model with the plan carried equals the reference graph), and at the base width a
ratio-form spec must give the user's own model exactly (TP5 Eq. 4)."""

from pathlib import Path

import pytest
import torch

from mupdsl.compile import compile_model

PATTERNS = Path(__file__).parent / "zoo" / "patterns"
D_HEAD, BASE_D_HEAD = 32, 16          # width 128 / 4 heads, base width 64


def plan(name, spec="mup", **kw):
    kw = {"width": 128, "base_width": 64, "optimizer": "adam", **kw}
    return compile_model(spec, str(PATTERNS / f"{name}.py"), **kw)


def tensors(compiled):
    return {t.name: t for t in compiled.plan.tensors}


@pytest.mark.parametrize("name,kind,own", [
    ("attn_prescaled_q", "matmul", D_HEAD ** -0.5),      # q * scale before q @ kᵀ
    ("attn_prescaled_qk", "matmul", D_HEAD ** -0.5),     # Whisper: d^-1/4 on q and on k
    ("attn_einsum", "einsum", D_HEAD ** -0.5),
    ("attn_baddbmm", "baddbmm", D_HEAD ** -0.5),         # the scale is baddbmm's alpha
    ("attn_where_mask", "matmul", D_HEAD ** -0.5),
    ("attn_softcap", "matmul", D_HEAD ** -0.5),          # cap * tanh(logits / cap) after the scale
    ("attn_scale_one", "matmul", 1.0),                   # T5: no 1/sqrt(d)
])
def test_the_models_own_attention_scale_is_found_and_replaced(name, kind, own):
    compiled = plan(name)
    sites = compiled.plan.attention
    assert len(sites) == 2 and {s.kind for s in sites} == {kind}
    for site in sites:
        assert site.own_scale == pytest.approx(own)
        assert site.base_own_scale == pytest.approx(own * (D_HEAD / BASE_D_HEAD) ** 0.5 if own != 1.0 else 1.0)
        # µP replaces it by the model's own scale at the base times base_d/d (1/d for the usual 1/sqrt(d))
        assert site.scale == pytest.approx(site.base_own_scale * BASE_D_HEAD / D_HEAD)
        assert site.factor == pytest.approx(site.scale / own)
        # on the query projection (or the key's: the logits are linear in either)
        assert site.carried_by.startswith("folded into") and (".q." in site.carried_by or ".k." in site.carried_by)
    assert compiled.plan.checks["carried"].startswith("verified")


def test_replaced_scale_is_the_spec_s_scale_in_the_output():
    """Independently of the compiler's graph: the pre-scaled-q model with its q projection multiplied by
    (spec scale / own scale) by hand computes what the compiled model computes."""
    import importlib.util

    compiled = plan("attn_prescaled_q", seed=3)
    spec = importlib.util.spec_from_file_location("prescaled", PATTERNS / "attn_prescaled_q.py")
    source = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(source)
    hand = source.build(128)
    factor = compiled.plan.attention[0].factor
    with torch.no_grad():
        for name, p in hand.named_parameters():
            t = compiled.plan.tensor(name)
            p.copy_(compiled.model.get_parameter(name) / t.carried.fold * (t.mult if t.role == "output" else 1.0))
        for block in hand.blocks:
            block.attn.q.weight.mul_(factor)
            block.attn.q.bias.mul_(factor)
    inputs, _ = source.example_batch(4)
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    assert torch.allclose(hand(*inputs), compiled(*inputs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(p.stem for p in PATTERNS.glob("*.py")))
def test_at_the_base_width_mup_is_the_users_model(name):
    compiled = plan(name, width=64, base_width=64)
    assert compiled.plan.checks["base_identity"].startswith("passed: at the base width the outputs are the model's")


def test_parallel_block_has_both_branches():
    compiled = plan("parallel_block", spec="depth_mup_k2", depth=4, base_depth=2)
    blocks = compiled.plan.residual_blocks
    assert len(blocks) == 4 and all(len(b.branches) == 2 for b in blocks)   # x + attn(ln x) + mlp(ln x)
    t = tensors(compiled)
    assert t["blocks.0.mlp.proj.weight"].residual and t["blocks.0.attn.proj.weight"].residual
    assert t["blocks.0.mlp.proj.weight"].carried.fold == pytest.approx(0.5 ** 0.5)   # depth_mult^-1/2, folded


def test_branch_of_width_independent_weights_is_a_branch():
    compiled = plan("token_mixing_branch", spec="depth_mup_k2", depth=4, base_depth=2)
    t = tensors(compiled)
    mixing = [n for n in t if "token" in n and n.endswith("weight")]
    assert mixing and all(t[n].role == "scalar" and t[n].residual for n in mixing)
    assert len(compiled.plan.residual_blocks) == 8


@pytest.mark.parametrize("name", ["readout_transposed", "readout_cast"])
def test_tied_readout_through_a_view_gets_the_output_multiplier(name):
    compiled = plan(name)
    table = compiled.plan.tensor("tok.weight")
    assert table.role == "embedding" and sorted(table.use_mults.values()) == [0.5, 1.0]
    # the readout is written in the model's own forward: the multiplier is a hook on the model's output
    assert [(m.module, m.kind, m.factor) for m in compiled.plan.runtime] == [("", "output", 0.5)]
    assert not any("output role" in w for w in compiled.plan.warnings)


def test_conv_transpose_fans_come_from_its_layout():
    t = tensors(plan("conv_transpose"))
    up = t["up.weight"]                    # ConvTranspose2d(w, w/2, 2, stride 2): stored [in, out, 2, 2]
    assert up.role == "hidden" and (up.fan_in, up.base_fan_in) == (128, 64)   # one tap per input channel
    assert t["head.weight"].role == "output" and t["stem.weight"].role == "input"


def test_grouped_and_depthwise_convolutions():
    t = tensors(plan("grouped_conv"))
    grouped, depthwise = t["blocks.0.gconv.weight"], t["blocks.0.dwconv.weight"]
    assert grouped.role == "hidden" and grouped.fan_in == 32 * 9 and grouped.base_fan_in == 16 * 9
    assert depthwise.role == "input" and depthwise.fan_in == depthwise.base_fan_in == 9   # vector-like


def test_width_dependent_constant_is_reported():
    compiled = plan("width_constant")
    assert any("width-dependent constant" in w and "0.0883883" in w and "0.125" in w for w in compiled.plan.warnings)


def test_layer_scale_is_a_gain_and_carries_the_branch_multiplier():
    compiled = plan("layer_scale", spec="depth_mup_k2", depth=4, base_depth=2)
    gamma = compiled.plan.tensor("blocks.0.gamma_1")
    assert gamma.role == "norm" and gamma.carried.fold == pytest.approx(0.5 ** 0.5)
    assert compiled.plan.runtime == []


def test_query_norm_carries_the_attention_scale():
    compiled = plan("qk_norm")
    assert all(s.carried_by.endswith("q_norm.weight") for s in compiled.plan.attention)
    assert compiled.plan.tensor("blocks.0.attn.q_norm.weight").carried.fold == pytest.approx(0.5 ** 0.5)
