"""Coordinate checks of the new optimizer families on the reference MLP: µP PASS, SP FAIL (measured in
docs/optimizers.md), and Adam's hidden rule on Adafactor FAIL (c_Adafactor = c_Adam − b)."""

import pytest

from mupdsl.measure import coordcheck

FAST = dict(widths=(64, 128, 256, 512), seeds=2, batch_size=16)
MLP = "mupdsl.models.mlp"
FAMILIES = {"signsgd": ("mup", "sp"), "lion": ("mup", "sp"), "adafactor": ("mup_adafactor", "sp_adafactor"),
            "muon": ("mup_muon", "sp_muon")}


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
