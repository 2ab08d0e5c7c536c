"""The optimizer sections signsgd, lion, adafactor and muon: what they inherit, what they refuse (located), Muon's
owners and fallback, and the symmetry explain reports for each."""

from fractions import Fraction as F

import pytest

from mupdsl.optim.families import FAMILY
from mupdsl.spec import SpecError, differences, explain, load_spec
from mupdsl.spec.abc import LR_POWER, SYMMETRY, invariant_names
from mupdsl.spec.resolve import trained_by


def _load(tmp_path, text, name="s.param"):
    path = tmp_path / name
    path.write_text(text)
    return load_spec(str(path))


def _error(tmp_path, text):
    with pytest.raises(SpecError) as err:
        _load(tmp_path, text)
    return err.value


@pytest.mark.parametrize("section", ["signsgd", "lion", "muon"])
def test_eps_in_a_section_without_epsilon_is_a_located_error(tmp_path, section):
    err = _error(tmp_path, f"extends mup\n{section} {{\n  hidden {{ lr = eta0; eps = 1e-8 }}\n}}\n")
    assert (err.pos.line, err.pos.col) == (3, 23) and f"{section} has no ε" in err.message
    assert str(err).startswith(f"{tmp_path}/s.param:3:23: error:")


def test_adafactor_takes_eps(tmp_path):
    spec = _load(tmp_path, "extends mup\nadafactor {\n  default { lr = eta0; eps = 1e-30 }\n}\n")
    assert explain(spec, "adafactor").roles["hidden"].texts["eps"] == "1e-30"


def test_muon_key_and_fallback_only_in_the_muon_section(tmp_path):
    err = _error(tmp_path, "extends mup\nhidden { muon = true }\n")
    assert (err.pos.line, err.pos.col) == (2, 10) and "section muon" in err.message
    err = _error(tmp_path, "extends mup\nadam { fallback = adam }\n")
    assert (err.pos.line, err.pos.col) == (2, 8) and "'fallback' cannot stand in section 'adam'" in err.message
    assert "muon { fallback = adam }" in err.hint     # the hint names the fix that works
    err = _error(tmp_path, "extends mup\nmuon {\n  fallback = lyon\n}\n")
    assert (err.pos.line, err.pos.col) == (3, 14) and "did you mean 'lion'" in err.hint
    err = _error(tmp_path, "extends mup\nmuon {\n  fallback = muon\n}\n")
    assert "cannot be Muon's fallback" in err.message
    err = _error(tmp_path, "extends mup\nmuon {\n  output { muon = 1 }\n}\n")
    assert (err.pos.line, err.pos.col) == (3, 19) and "true or false" in err.message


def test_sign_sections_inherit_adams_rules_and_override_them(tmp_path):
    spec = _load(tmp_path, "extends mup\nlion {\n  output { lr = eta0 / 3 }\n}\n")
    for optimizer in ("signsgd", "lion"):
        e = explain(spec, optimizer)
        assert e.roles["hidden"].texts["lr"] == "eta0 / fan_in_mult"   # adam's section
    assert explain(spec, "lion").roles["output"].texts["lr"] == "eta0 / 3"
    assert explain(spec, "signsgd").roles["output"].texts["lr"] == "eta0"
    for optimizer in ("signsgd", "lion"):
        assert differences(load_spec("mup"), load_spec("mup"), optimizer) == []


def test_adafactor_and_muon_do_not_inherit_adam():
    with pytest.raises(SpecError, match=r"no rule decides lr .*optimizer adafactor"):
        from mupdsl.spec.resolve import tensor_rule   # noqa: PLC0415

        tensor_rule(load_spec("mup"), "adafactor", None, "hidden")
    assert explain(load_spec("mup"), "muon").roles["hidden"] is None   # Muon's matrices need a muon rule
    assert explain(load_spec("mup"), "muon").roles["output"].optimizer == "adamw"


@pytest.mark.parametrize("preset", ["mean_field", "umup"])
@pytest.mark.parametrize("optimizer,role", [("adafactor", "input"), ("muon", "hidden")])
def test_rates_written_in_the_common_part_are_not_read_by_adafactor_or_muon(preset, optimizer, role):
    # mean_field and umup write their rates outside any section, for SGD and Adam: under Adafactor's scaled step
    # and Muon's orthogonalised one they would be another parametrization, so no rule decides lr
    from mupdsl.spec.resolve import tensor_rule   # noqa: PLC0415

    with pytest.raises(SpecError, match=r"no rule decides lr .*optimizer " + optimizer) as err:
        tensor_rule(load_spec(preset), optimizer, None, role)
    assert "does not read lr from the common part" in err.value.hint
    assert tensor_rule(load_spec(preset), "adam", None, role).lr is not None


def test_adafactor_reads_its_epsilon_from_its_own_section_only(tmp_path):
    from mupdsl.spec.resolve import tensor_rule   # noqa: PLC0415

    common = _load(tmp_path, "extends sp\ndefault { eps = 1e-3 }\nadafactor { default { lr = eta0 } }\n")
    assert tensor_rule(common, "adafactor", None, "hidden").eps is None      # Adam's ε is not Adafactor's ε₁
    assert tensor_rule(common, "adafactor_unscaled", None, "hidden").eps is not None   # reads Adam's rules
    own = _load(tmp_path, "extends sp\nadafactor { default { lr = eta0; eps = 1e-30 } }\n", "own.param")
    assert tensor_rule(own, "adafactor", None, "hidden").eps is not None
    fallback = _load(tmp_path, "extends mup_muon\ndefault { lr = eta0 }\n", "fb.param")
    assert tensor_rule(fallback, "muon", None, "output").lr is not None    # Muon's fallback reads the common part
    # a glob in the common part names its tensors on purpose: it still decides under adafactor and muon
    named = _load(tmp_path, 'extends mup_muon\n"hidden.*.weight" { lr = 1e-9 }\n', "glob.param")
    assert tensor_rule(named, "muon", "hidden.0.weight", "hidden").lr.coef == pytest.approx(1e-9)
    named = _load(tmp_path, 'extends mup_adafactor\n"readout.weight" { lr = 1e-9; eps = 1e-20 }\n', "glob2.param")
    rule = tensor_rule(named, "adafactor", "readout.weight", "output")
    assert rule.lr.coef == pytest.approx(1e-9) and rule.eps.coef == pytest.approx(1e-20)


def test_muon_owners_and_fallback(tmp_path):
    spec = _load(tmp_path, 'extends mup_muon\nmuon {\n  fallback = adam\n  "head.weight" { muon = false }\n'
                           '  embedding { muon = true }\n}\n')
    assert spec.fallback == "adam" and spec.fallback_pos.line == 3
    assert trained_by(spec, "muon", "blocks.0.weight", "hidden") == "muon"
    assert trained_by(spec, "muon", "head.weight", "hidden") == "adam"
    assert trained_by(spec, "muon", "wte.weight", "embedding") == "muon"
    assert trained_by(spec, "muon", "ln.weight", "norm") == "adam"
    child = _load(tmp_path, f'extends "{tmp_path}/s.param"\n', "child.param")
    assert child.fallback == "adam"                       # inherited through extends
    assert load_spec("mup_muon").fallback == "adamw"


def test_preset_exponents_for_the_new_families():
    def abc(name, optimizer, role):
        r = explain(load_spec(name), optimizer).roles[role]
        return r.a, r.b, r.c

    # sign-like: Adam's µP (TP5 Table 8 form): hidden c = 1
    assert abc("mup", "lion", "hidden") == abc("mup", "signsgd", "hidden") == (0, F(1, 2), 1)
    # Adafactor: c_Adam − b (Everett et al. 2024): hidden ½, input and output 0
    assert abc("mup_adafactor", "adafactor", "hidden") == (0, F(1, 2), F(1, 2))
    assert abc("mup_adafactor", "adafactor", "output") == (1, 0, 0)
    # Adafactor without parameter scaling: a scale-free step times lr, as Adam's, so Adam's rules and exponents
    for role in ("input", "hidden", "output", "bias"):
        assert abc("mup", "adafactor_unscaled", role) == abc("mup", "adam", role)
    # Muon: spectral condition, hidden lr width-independent; the rest is AdamW's µP
    assert abc("mup_muon", "muon", "hidden") == (0, F(1, 2), 0)
    assert abc("mup_muon", "muon", "output") == abc("mup", "adam", "output")


def test_symmetries_and_their_invariants():
    assert invariant_names("sgd") == ("a+b", "2a+c") and invariant_names("lion") == ("a+b", "a+c")
    assert invariant_names("adafactor") == ("a+b", "c") and invariant_names("adafactor_unscaled") == ("a+b", "a+c")
    assert set(SYMMETRY) == set(LR_POWER) == set(FAMILY)
    power = {"sgd": 2, "adam": 1, "adafactor": 0}   # adafactor_unscaled folds as the adam family
    assert all(LR_POWER[o] == power[f] for o, f in FAMILY.items())   # the spec's symmetry is the compiler's folding
    note = explain(load_spec("mup_muon"), "muon").symmetry
    assert "no symmetry maps Muon's exponents to Adam's" in note and "fallback is adamw" in note
    # under Adafactor's symmetry, c is invariant: mup_adafactor and mup differ exactly in the hidden c
    diff = differences(load_spec("mup_adafactor"), load_spec("sp_adafactor"), "adafactor")
    assert any(d.what == "hidden: c" for d in diff)
