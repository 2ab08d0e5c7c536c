"""Coordinate checks of the new optimizer families on the reference MLP, the reference GPT and a HuggingFace Llama:
µP PASS, SP FAIL (measured in docs/optimizers.md), and Adam's hidden rule on Adafactor FAIL (c_Adafactor =
c_Adam − b)."""

from pathlib import Path

import pytest

from mupdsl.measure import coordcheck

FAST = dict(widths=(64, 128, 256, 512), seeds=2, batch_size=16)
MLP = "mupdsl.models.mlp"
FAMILIES = {"signsgd": ("mup", "sp"), "lion": ("mup", "sp"), "adafactor": ("mup_adafactor", "sp_adafactor"),
            "adafactor_unscaled": ("mup", "sp"), "muon": ("mup_muon", "sp_muon")}


TRANSFORMER = dict(widths=(64, 128, 256, 512), seeds=2, steps=3, batch_size=8)
GPT = "mupdsl.models.gpt"
LLAMA = str(Path(__file__).resolve().parent / "zoo" / "hf_llama.py")


@pytest.mark.parametrize("optimizer", sorted(FAMILIES))
def test_mup_passes_and_sp_fails(optimizer):
    mup, sp = FAMILIES[optimizer]
    result = coordcheck(mup, MLP, optimizer=optimizer, **FAST)
    assert result.verdict == "PASS", [(f["key"], f["step"], round(f["slope"], 2)) for f in result.failures]
    result = coordcheck(sp, MLP, optimizer=optimizer, **FAST)
    assert result.verdict == "FAIL" and any(f["symptom"] == "explode" for f in result.failures)
    assert any(f["key"] == "output" for f in result.failures)


def test_adams_hidden_rule_on_adafactor_fails(tmp_path):
    path = tmp_path / "adam_rule.param"
    path.write_text("extends mup\nadafactor {\n  default { lr = eta0 }\n  hidden { lr = eta0 / fan_in_mult }\n}\n")
    result = coordcheck(str(path), MLP, optimizer="adafactor", **FAST)
    assert result.verdict == "FAIL" and {f["symptom"] for f in result.failures} == {"vanish"}


def check_transformer(model, optimizer):
    mup, sp = FAMILIES[optimizer]
    result = coordcheck(mup, model, optimizer=optimizer, **TRANSFORMER)
    assert result.verdict == "PASS", [(f["key"], f["step"], round(f["slope"], 2)) for f in result.failures]
    result = coordcheck(sp, model, optimizer=optimizer, **TRANSFORMER)
    assert result.verdict == "FAIL" and any(f["symptom"] == "explode" for f in result.failures)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", sorted(FAMILIES))
def test_gpt_mup_passes_and_sp_fails(optimizer):
    check_transformer(GPT, optimizer)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", sorted(FAMILIES))
def test_llama_mup_passes_and_sp_fails(optimizer):
    pytest.importorskip("transformers")
    check_transformer(LLAMA, optimizer)
