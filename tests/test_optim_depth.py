"""Depth rules of the depth presets under Adafactor and Muon (docs/optimizers.md): Depth-µP scales the rates of
the tensors inside residual blocks by depth^(-1/2), as Adam's; CompleteP leaves them alone (α = 1); the tensors
outside the blocks, and the AdamW fallback's, follow the preset's Adam rules."""

import math

import pytest

from mupdsl.compile import compile_model

GPT = "mupdsl.models.gpt"
FACTOR = {"depth_mup_k1": 2 ** -0.5, "depth_mup_k2": 2 ** -0.5, "completep": 1.0}


def rates(spec, optimizer, depth):
    compiled = compile_model(spec, GPT, width=64, base_width=64, depth=depth, base_depth=2, optimizer=optimizer)
    return {t.name: (t.optimizer, t.carried.lr) for t in compiled.plan.tensors}


@pytest.mark.parametrize("optimizer", ["adafactor", "muon"])
@pytest.mark.parametrize("spec", sorted(FACTOR))
def test_depth_factor_of_the_rates_inside_residual_blocks(spec, optimizer):
    base, deep = rates(spec, optimizer, 2), rates(spec, optimizer, 4)
    for name in ("blocks.0.attn.k.weight", "blocks.0.fc.weight", "blocks.0.fc.bias", "blocks.1.ln2.weight"):
        assert deep[name][1] == pytest.approx(base[name][1] * FACTOR[spec], rel=1e-6), name
    assert deep["blocks.0.fc.weight"][0] == ("muon" if optimizer == "muon" else None)
    for name in ("tok.weight", "ln_f.weight"):     # outside the blocks: no depth factor
        assert deep[name][1] == pytest.approx(base[name][1], rel=1e-6), name


def test_muon_hidden_rate_holds_the_spectral_shape_factor_once():
    plan = rates("completep", "muon", 2)
    fc, proj = plan["blocks.0.fc.weight"][1], plan["blocks.0.proj.weight"][1]
    assert fc / proj == pytest.approx(math.sqrt(4) / math.sqrt(1 / 4))    # √(fan_out/fan_in): 4w×w vs w×4w
