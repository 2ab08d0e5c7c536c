"""Every bad spec gets the project's own error: message, line and column, caret, hint — never a traceback."""

import pytest

from mupdsl.spec import SpecError, load_spec

OK_HEAD = "hyper eta0 = 0.1\n"

# (source, expected message fragment, line, column, hint fragment or None)
CASES = [
    ("hidden { lr = eta0 * }", "unexpected '}'", 1, 22, "expected"),
    ("hidden { lr = eta0 ", "unexpected end of file", 1, 20, None),
    ("hidden { lr = eta0 $ }", "unexpected character '$'", 1, 20, None),
    (OK_HEAD + "hiden { lr = eta0 }", "unknown role 'hiden'", 2, 1, "did you mean 'hidden'"),
    (OK_HEAD + "hidden { lrr = eta0 }", "unknown tensor setting 'lrr'", 2, 10, "did you mean 'lr'"),
    (OK_HEAD + "hidden { lr = eta }", "unknown name 'eta'", 2, 15, "did you mean 'eta0'"),
    (OK_HEAD + "hidden { lr = eta0 * widht }", "unknown name 'widht'", 2, 22, "did you mean 'width'"),
    (OK_HEAD + "hidden { lr = eta0 / 0 }", "division by zero", 2, 22, None),
    (OK_HEAD + "hidden { lr = eta0 * width^(1/0) }", "division by zero", 2, 31, None),
    (OK_HEAD + "hidden { lr = eta0 * 0^-1 }", "zero raised to a negative power", 2, 22, None),
    (OK_HEAD + 'hidden "blocks.*.attn[.q" { lr = eta0 }', "unclosed '['", 2, 8, None),
    (OK_HEAD + 'hidden "blocks. x" { lr = eta0 }', "bad character ' ' in name glob", 2, 16, None),
    (OK_HEAD + 'hidden "" { lr = eta0 }', "empty name glob", 2, 8, None),
    (OK_HEAD + 'hidden "blocks..q" { lr = eta0 }', "empty name part", 2, 8, None),
    (OK_HEAD + "hidden { lr = eta0 }\nhidden { mult = 1 }", "duplicate rule 'hidden'", 3, 1, "merge"),
    (OK_HEAD + "adam { hidden { lr = eta0 } }\nadam { hidden { mult = 1 } }", "duplicate rule 'hidden' in section 'adam'", 3, 8, None),
    (OK_HEAD + "hidden { lr = eta0; lr = 1 }", "'lr' is set twice", 2, 21, None),
    (OK_HEAD + "hyper eta0 = 1", "declared twice", 2, 7, None),
    (OK_HEAD + "set gamma0 = 1", "undeclared hyperparameter 'gamma0'", 2, 5, None),
    (OK_HEAD + "set eta = 1", "undeclared hyperparameter 'eta'", 2, 5, "did you mean 'eta0'"),
    ("extends nonexistent_preset\n", "cannot find spec 'nonexistent_preset'", 1, 9, None),
    ("extends mpu\n", "cannot find spec 'mpu'", 1, 9, "did you mean 'mup'"),
    ("extends sp\nhyper eta0 = 1", "already declared by the spec this one extends", 2, 7, "set eta0"),
    (OK_HEAD + "hidden { init = norml(std = 1) }", "unknown init 'norml'", 2, 17, "did you mean 'normal'"),
    (OK_HEAD + "hidden { init = normal(sd = 1) }", "normal() takes 'std', not 'sd'", 2, 24, None),
    (OK_HEAD + "hidden { init = eta0 }", "not an init form", 2, 17, None),
    (OK_HEAD + "hidden { lr = normal(std = 1) }", "'lr' takes an expression", 2, 15, None),
    (OK_HEAD + "network { gama = 1 }", "unknown network setting 'gama'", 2, 11, "did you mean 'gamma'"),
    (OK_HEAD + "network { gamma = fan_in }", "'fan_in' is a per-tensor size", 2, 19, None),
    (OK_HEAD + "network { alpha = depth }", "network 'alpha' must be a constant", 2, 11, None),
    (OK_HEAD + "network { center = 1 }", "expected true or false", 2, 20, None),
    (OK_HEAD + "network { gamma = 2 }\nnetwork { gamma = 3 }", "'gamma' is set twice", 3, 11, "set it once"),
    (OK_HEAD + "adam { network { alpha = 1 } }\nadam { network { alpha = 0 } }",
     "'alpha' is set twice in section 'adam'", 3, 18, None),
    (OK_HEAD + "set eta0 = 0x10", "'0x10' is not a number", 2, 12, "in decimal"),
    (OK_HEAD + "set eta0 = 0x10\nhidden { lr = eta0 }", "'0x10' is not a number", 2, 12, None),
    (OK_HEAD + "hidden { lr = .5e }", "'.5e' is not a number", 2, 15, None),
    ("hyper eta0 = 1e-3\nhyper wd0 = 1.5E+2\nhidden { lr = eta0 ) }", "unexpected ')'", 3, 20, None),
    (OK_HEAD + "# 2x the rate\nhidden { lr = eta0 * 1_000 }", "'1_000' is not a number", 3, 22, None),
    (OK_HEAD + 'hidden "blocks.0x" { lr = 2e }', "'2e' is not a number", 2, 27, None),
    (OK_HEAD + "sgd { lr = eta0 }", "cannot stand directly in section 'sgd'", 2, 7, None),
    (OK_HEAD + "sgd { adam { hidden { lr = eta0 } } }", "section 'adam' cannot be nested", 2, 7, None),
    (OK_HEAD + "hidden { input { lr = eta0 } }", "rules cannot be nested", 2, 10, None),
    (OK_HEAD + "hidden { lr = eta0 * fan_in^-1/2 }", "ambiguous exponent", 2, 22, "fan_in^(-1/2)"),
    (OK_HEAD + "hidden { lr = eta0 + 1 }", "unexpected '+'", 2, 20, None),
    (OK_HEAD + "hidden { }", "empty rule", 2, 1, None),
    (OK_HEAD + "hidden { lr = (-1)^(1/2) }", "negative number raised to the power 1/2", 2, 15, None),
    (OK_HEAD + 'hidden { lr = "x" }', "unexpected glob", 2, 15, None),
    (OK_HEAD + "hyper width = 3", "reserved name", 2, 7, None),
    (OK_HEAD + "residual input hidden { lr = eta0 }", "unexpected name 'hidden'", 2, 16, None),
    ("spec a\nspec b", "named twice", 2, 1, None),
    (OK_HEAD + "hidden { lr = eta0 * width^depth }", "depends on the model's size", 2, 28, None),
    # limits (docs/language.md, "Limits")
    (OK_HEAD + "hidden { lr = eta0 * " + "1" * 5000 + " }", "number too long", 2, 22, "at most 100 characters"),
    (OK_HEAD + "hidden { lr = eta0 * 1e100000000 }", "number out of range", 2, 22, "1e-300"),
    (OK_HEAD + "hidden { lr = eta0 * (-8)^(2/3) }", "negative number raised to the power 2/3", 2, 22,
     "fractional power needs a positive base"),
    (OK_HEAD + "hidden { lr = eta0 * width^1000 }", "exponent 1000 out of range", 2, 28, None),
    (OK_HEAD + 'hidden "[z-a]" { lr = eta0 }', "range 'z-a' runs backwards", 2, 11, None),
    (OK_HEAD + "hidden { lr = -eta0 }", "'lr' is negative", 2, 15, "0 or positive"),
    (OK_HEAD + "hidden { lr = " + "(" * 200 + "eta0" + ")" * 200 + " }", "nested too deeply", 2, 115, None),
    (OK_HEAD + "\fhidden { lr = eta0 * }", "unexpected '}'", 2, 23, "expected"),
    (OK_HEAD + "# \u2028 \x1c \x85\nhidden { lr = eta0 * }", "unexpected '}'", 3, 22, "expected"),
    ("hyper eta0 = 0.1\rhidden { lr = eta0 * }", "unexpected '}'", 2, 22, "expected"),
]


@pytest.mark.parametrize("source,fragment,line,col,hint", CASES, ids=[c[1][:40] for c in CASES])
def test_error_location_and_message(tmp_path, source, fragment, line, col, hint):
    path = tmp_path / "bad.param"
    path.write_text(source, newline="")
    with pytest.raises(SpecError) as info:
        load_spec(str(path))
    err = info.value
    assert fragment in err.message, err.render()
    assert (err.pos.line, err.pos.col) == (line, col), err.render()
    assert err.pos.path.endswith("bad.param")
    rendered = err.render()
    assert rendered.startswith(f"{err.pos.path}:{line}:{col}: error: ")
    assert "^" in rendered  # the caret under the culprit
    if hint:
        assert hint in rendered


def test_extends_cycle(tmp_path):
    (tmp_path / "a.param").write_text('extends "b.param"\n')
    (tmp_path / "b.param").write_text('hyper eta0 = 1\nextends "a.param"\n')
    (tmp_path / "c.param").write_text('extends "a.param"\n')
    with pytest.raises(SpecError) as info:
        load_spec(str(tmp_path / "c.param"))
    assert "extends cycle" in info.value.message or "must come before" in info.value.message
    (tmp_path / "b.param").write_text('extends "a.param"\nhyper eta0 = 1\n')
    with pytest.raises(SpecError) as info:
        load_spec(str(tmp_path / "c.param"))
    assert "extends cycle: a.param -> b.param -> a.param" in info.value.message
    assert (info.value.pos.line, info.value.pos.col) == (1, 9)


def test_missing_file():
    with pytest.raises(SpecError) as info:
        load_spec("no/such/file.param")
    assert "no such spec file" in info.value.message


def test_override_of_undeclared_hyperparameter():
    with pytest.raises(SpecError) as info:
        load_spec("mup", {"eta": 0.1})
    assert "'eta' is not a hyperparameter" in info.value.message
    assert "did you mean 'eta0'" in info.value.render()
    with pytest.raises(SpecError) as info:
        load_spec("mup", {"eta0": "fast"})
    assert "not a number" in info.value.message
    for text, message in [("1/2/3", "'1/2/3' is not a number: one '/' at most"), ("1/x", "'1/x' is not a number"),
                          ("1/1e-400", "number out of range: 1e-400")]:
        with pytest.raises(SpecError) as info:
            load_spec("mup", {"eta0": text})
        assert message in info.value.message      # the whole value quoted, or the part's own range error
    assert float(load_spec("mup", {"eta0": "+1/4"}).hypers["eta0"].value) == 0.25


def test_override_applies():
    assert float(load_spec("mup", eta0=0.5).hypers["eta0"].value) == 0.5


def test_not_utf8(tmp_path):
    path = tmp_path / "bin.param"
    path.write_bytes(b"hyper eta0 = 1\n\xff\xfe")
    with pytest.raises(SpecError) as info:
        load_spec(str(path))
    assert (info.value.pos.line, info.value.pos.col) == (2, 1)


def test_a_spec_loaded_again_sees_edits_to_it_and_to_what_it_extends(tmp_path):
    """Loaded specs are remembered per file, but an edit of the file or of a file it extends is read again."""
    import os
    from fractions import Fraction

    parent = tmp_path / "parent.param"
    child = tmp_path / "child.param"
    parent.write_text('spec parent\nhyper eta0 = 0.1\ndefault { init = keep }\n')
    child.write_text('spec child extends "parent.param"\nset eta0 = 0.2\n')
    assert load_spec(child).hypers["eta0"].value == load_spec(child).hypers["eta0"].value == Fraction(1, 5)
    assert load_spec(child) is load_spec(child)
    parent.write_text('spec parent\nhyper eta0 = 0.1\nhyper beta = 3\ndefault { init = keep }\n')
    os.utime(parent, ns=(parent.stat().st_atime_ns, parent.stat().st_mtime_ns + 10**9))
    assert "beta" in load_spec(child).hypers
    child.write_text('spec child extends "parent.param"\nset eta0 = 0.3\n')
    os.utime(child, ns=(child.stat().st_atime_ns, child.stat().st_mtime_ns + 2 * 10**9))
    assert load_spec(child).hypers["eta0"].value == Fraction(3, 10)
