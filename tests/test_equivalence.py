"""abc-symmetry: TP5's three forms of µP are equivalent for SGD and Adam; SP and NTP are not µP."""

import pytest

from mupdsl.spec import differences, load_spec

HEADER = "hyper eta0 = 0.1\nnetwork { gamma = 1 }\nscalar { init = keep; mult = 1; lr = eta0 }\n"

# TP5 Table 3: no multipliers.
TABLE3 = HEADER + """
input     { init = normal(std = fan_in^(-1/2)); mult = 1 }
embedding { init = normal(std = fan_in^(-1/2)); mult = 1 }
bias      { init = normal(std = fan_in^(-1/2)); mult = 1 }
norm      { init = normal(std = fan_in^(-1/2)); mult = 1 }
hidden    { init = normal(std = fan_in^(-1/2)); mult = 1 }
output    { init = normal(std = fan_in^-1); mult = 1 }
sgd {
  input { lr = eta0 * fan_out }  embedding { lr = eta0 * fan_out }
  bias  { lr = eta0 * fan_out }  norm { lr = eta0 * fan_out }
  hidden { lr = eta0 }           output { lr = eta0 / fan_in }
}
adam {
  input { lr = eta0 }  embedding { lr = eta0 }  bias { lr = eta0 }  norm { lr = eta0 }
  hidden { lr = eta0 / fan_in }  output { lr = eta0 / fan_in }
}
"""

# TP5 Table 8: output multiplier 1/fan_in, unit output init.
TABLE8 = HEADER + """
input     { init = normal(std = fan_in^(-1/2)); mult = 1 }
embedding { init = normal(std = fan_in^(-1/2)); mult = 1 }
bias      { init = normal(std = fan_in^(-1/2)); mult = 1 }
norm      { init = normal(std = fan_in^(-1/2)); mult = 1 }
hidden    { init = normal(std = fan_in^(-1/2)); mult = 1 }
output    { init = normal(std = 1); mult = fan_in^-1 }
sgd {
  input { lr = eta0 * fan_out }  embedding { lr = eta0 * fan_out }
  bias  { lr = eta0 * fan_out }  norm { lr = eta0 * fan_out }
  hidden { lr = eta0 }           output { lr = eta0 * fan_in }
}
adam {
  input { lr = eta0 }  embedding { lr = eta0 }  bias { lr = eta0 }  norm { lr = eta0 }
  hidden { lr = eta0 / fan_in }  output { lr = eta0 }
}
"""

# TP5 Table 9 (TP4 style): input init var 1/fan_out, multiplier sqrt(fan_out); output 1/sqrt(fan_in).
TABLE9 = HEADER + """
input     { init = normal(std = fan_out^(-1/2)); mult = fan_out^(1/2) }
embedding { init = normal(std = fan_out^(-1/2)); mult = fan_out^(1/2) }
bias      { init = normal(std = fan_out^(-1/2)); mult = fan_out^(1/2) }
norm      { init = normal(std = fan_out^(-1/2)); mult = fan_out^(1/2) }
hidden    { init = normal(std = fan_in^(-1/2)); mult = 1 }
output    { init = normal(std = fan_in^(-1/2)); mult = fan_in^(-1/2) }
sgd { default { lr = eta0 } }
adam {
  input { lr = eta0 * fan_out^(-1/2) }  embedding { lr = eta0 * fan_out^(-1/2) }
  bias { lr = eta0 * fan_out^(-1/2) }   norm { lr = eta0 * fan_out^(-1/2) }
  hidden { lr = eta0 / fan_in }         output { lr = eta0 * fan_in^(-1/2) }
}
"""

# SP with TP5 Table 3's gray entries.
SP_TABLE3 = HEADER + """
default { init = normal(std = fan_in^(-1/2)); mult = 1; lr = eta0 }
"""


@pytest.fixture
def forms(tmp_path):
    out = {}
    for name, text in (("table3", TABLE3), ("table8", TABLE8), ("table9", TABLE9), ("sp3", SP_TABLE3)):
        path = tmp_path / f"{name}.param"
        path.write_text(text)
        out[name] = load_spec(str(path))
    return out


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("pair", [("table3", "table8"), ("table3", "table9"), ("table8", "table9")])
def test_tp5_forms_equivalent(forms, opt, pair):
    assert differences(forms[pair[0]], forms[pair[1]], opt) == []


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_sp_is_not_mup(forms, opt):
    diffs = differences(forms["sp3"], forms["table8"], opt)
    assert any(d.what.startswith("output") for d in diffs)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_presets_sp_ntp_not_equivalent_to_mup(opt):
    mup = load_spec("mup")
    for other in ("sp", "ntp"):
        assert differences(load_spec(other), mup, opt), other
    assert differences(load_spec("sp"), load_spec("ntp"), opt)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_mup_preset_matches_table8_on_weights(forms, opt):
    diffs = differences(load_spec("mup"), forms["table8"], opt)
    # The test form says nothing about attention (model default); every role is Table 8's.
    assert [d.what for d in diffs] == ["attention exponent"]


def test_mean_field_equivalent_to_mup_on_weights():
    for opt in ("sgd", "adam"):
        diffs = differences(load_spec("mean_field"), load_spec("mup"), opt)
        assert diffs and all("bias: init" in d.what for d in diffs), diffs  # mean-field biases start at zero


def test_symmetry_moves_are_equivalent_and_others_are_not(tmp_path):
    base = HEADER + "default { init = normal(std = fan_in^(-1/2)); mult = 1; lr = eta0 }\n"
    # theta = n^(-1/2) on hidden: SGD (a+1/2, b-1/2, c-1), Adam (a+1/2, b-1/2, c-1/2).
    sgd_moved = base + "hidden { init = normal(std = 1); mult = fan_in^(-1/2); lr = eta0 * fan_in }\n"
    adam_moved = base + "hidden { init = normal(std = 1); mult = fan_in^(-1/2); lr = eta0 * fan_in^(1/2) }\n"
    paths = {}
    for name, text in (("base", base), ("sgd", sgd_moved), ("adam", adam_moved)):
        paths[name] = tmp_path / f"{name}.param"
        paths[name].write_text(text)
    spec = {k: load_spec(str(v)) for k, v in paths.items()}
    assert differences(spec["base"], spec["sgd"], "sgd") == []
    assert differences(spec["base"], spec["sgd"], "adam") != []
    assert differences(spec["base"], spec["adam"], "adam") == []
    assert differences(spec["base"], spec["adam"], "sgd") != []
