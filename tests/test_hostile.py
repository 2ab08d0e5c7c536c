"""Hostile input never crashes, hangs or is silently accepted (the issue's fault-injection run, case by case).

Every case gets the project's own error — ``file:line:col`` and what is allowed for a spec, the flag for the
command line, the TOML key for an experiment file — exit code 2, no traceback, within a second.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import within
from mupdsl.cli import main
from mupdsl.spec import SpecError, load_spec
from mupdsl.spec.expr import EvaluationError, Monomial
from mupdsl.spec.limits import MAX_EXPONENT, MAX_EXPR_TOKENS, MAX_NESTING
from mupdsl.spec.resolve import glob_matcher, network
from mupdsl.sweep.experiment import ExperimentError
from mupdsl.sweep.experiment_file import load_experiment

ROOT = Path(__file__).resolve().parent.parent
MODEL = "mupdsl.models.mlp"




def spec_error(tmp_path: Path, text: str | bytes, name: str = "bad.param", **overrides) -> SpecError:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    with within(1.0), pytest.raises(SpecError) as info:
        load_spec(str(path), overrides or None)
    err = info.value
    rendered = err.render()
    assert rendered.startswith(f"{err.pos}: error: "), rendered
    return err


def located(err: SpecError, line: int, col: int | None = None) -> None:
    assert err.pos.path.endswith(".param"), err.render()
    assert err.pos.line == line, err.render()
    if col is not None:
        assert err.pos.col == col, err.render()
    assert "^" in err.render(), err.render()  # the caret under the culprit


def cli(*args: str, cwd: Path | None = None):
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        with within(60):
            result = CliRunner().invoke(main, list(args))
    finally:
        os.chdir(old)
    assert "Traceback" not in result.output, result.output
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def bad_flag(*args: str, flag: str, says: str) -> None:
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert flag in result.output and says in result.output, result.output


# ---------------------------------------------------------------------------------------------------------
# Numbers


def test_a_literal_over_4300_digits_is_a_located_error(tmp_path):
    err = spec_error(tmp_path, "hyper eta0 = " + "1" * 5000 + "\n")
    located(err, 1, 14)
    assert "number too long" in err.message and "at most 100" in err.message


@pytest.mark.parametrize("literal", ["1e100000000", "1e12000000", "1e400", "0.0001e-297", "1e99999999999999999999"])
def test_huge_exponents_are_refused_at_once(tmp_path, literal):
    err = spec_error(tmp_path, f"hyper eta0 = 1\nhidden {{ lr = eta0 * {literal} }}\n")
    located(err, 2, 22)
    assert "number out of range" in err.message and "1e-300" in err.message


def test_tiny_and_zero_literals(tmp_path):
    path = tmp_path / "ok.param"
    path.write_text("extends sp\nhyper tiny = 1e-15\nhyper nothing = 0e99999999999\n")
    with within(1.0):
        spec = load_spec(str(path))
    assert spec.hypers["tiny"].value == Fraction(1, 10**15)   # exact, not rounded to 0
    assert spec.hypers["nothing"].value == 0


def test_set_of_a_huge_number_is_bad_input():
    result = cli("explain", "mup", "--set", "eta0=1e400")
    assert result.exit_code == 2
    assert "--set eta0=1e400" in result.output and "out of range" in result.output
    for value in ("nan", "inf", "1e100000000", "1/0", "0x10"):
        result = cli("explain", "mup", "--set", f"eta0={value}")
        assert result.exit_code == 2, (value, result.output)
        assert f"--set eta0={value}" in result.output


def test_overrides_from_python_are_checked_too(tmp_path):
    for value in (float("nan"), float("inf"), Fraction(10) ** 400, "1e400", True):
        with pytest.raises(SpecError):
            load_spec("mup", {"eta0": value})


# ---------------------------------------------------------------------------------------------------------
# Line breaks that Lark and Python disagree on


ODD = ["\f", "\v", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("char", ODD, ids=[f"U+{ord(c):04X}" for c in ODD])
def test_odd_characters_in_a_comment_leave_positions_alone(tmp_path, char):
    err = spec_error(tmp_path, f"# a{char}b\nhyper eta0 = 1\nhidden {{ lr = eta0 * }}\n")
    located(err, 3, 22)
    lines = err.render().split("\n")
    assert lines[1].endswith("| hidden { lr = eta0 * }"), err.render()
    assert lines[2].index("^") - lines[2].index("|") - 2 == 21, err.render()


@pytest.mark.parametrize("char", ODD, ids=[f"U+{ord(c):04X}" for c in ODD])
def test_odd_characters_in_code(tmp_path, char):
    err = spec_error(tmp_path, f"hyper eta0 = 1\nhidden {{ lr = eta0 {char} 2 }}\nnorm {{ lr = 1 }}\n")
    rendered = err.render()
    located(err, 2)
    if char == "\f":    # whitespace to Lark: the error is the missing operator after it
        assert err.pos.col == 22, rendered
    else:
        assert err.pos.col == 20 and f"U+{ord(char):04X}" in err.message, rendered
    assert char not in rendered, repr(rendered)    # never printed raw under the caret
    assert rendered.split("\n")[1].startswith("    2 | hidden { lr = eta0 "), rendered


@pytest.mark.parametrize("newline", ["\r", "\r\n"], ids=["lone CR", "CRLF"])
def test_carriage_returns_are_line_breaks(tmp_path, newline):
    err = spec_error(tmp_path, f"hyper eta0 = 1{newline}hidden {{ lr = eta0 * }}{newline}")
    located(err, 2, 22)
    assert "\r" not in err.render()
    assert err.render().split("\n")[1] == "    2 | hidden { lr = eta0 * }"


def test_a_byte_order_mark_is_skipped_and_utf16_is_named(tmp_path):
    path = tmp_path / "bom.param"
    path.write_bytes(b"\xef\xbb\xbfextends sp\n")
    assert load_spec(str(path)).name == "bom"
    err = spec_error(tmp_path, "extends sp\n".encode("utf-16"))
    assert "not UTF-8" in err.message and "UTF-16" in (err.hint or "")


# ---------------------------------------------------------------------------------------------------------
# Expression size and nesting


def test_deep_nesting_points_at_the_culprit(tmp_path):
    err = spec_error(tmp_path, "hyper eta0 = 1\nhidden { lr = " + "(" * 5000 + "eta0" + ")" * 5000 + " }\n")
    located(err, 2, 15 + MAX_NESTING)     # the first parenthesis too many
    assert "nested too deeply" in err.message and str(MAX_NESTING) in err.message


def test_deep_unary_minus_points_at_the_culprit(tmp_path):
    err = spec_error(tmp_path, "hyper eta0 = 1\nhidden { lr = " + "-" * 3000 + "eta0 }\n")
    located(err, 2, 15 + MAX_NESTING)


def test_a_flat_product_is_not_nesting(tmp_path):
    for factors in (600, 4000):
        path = tmp_path / f"flat{factors}.param"
        path.write_text("extends sp\nhidden { lr = eta0 * " + " * ".join(["1"] * factors) + " }\n")
        with within(1.0):
            spec = load_spec(str(path))
        assert len(spec.rules) > 0


def test_a_too_long_expression_is_located_at_its_start(tmp_path):
    factors = MAX_EXPR_TOKENS // 2 + 10
    err = spec_error(tmp_path, "hyper eta0 = 1\nhidden { lr = " + " * ".join(["eta0"] * factors) + " }\n")
    located(err, 2, 15)
    assert "expression too long" in err.message


# ---------------------------------------------------------------------------------------------------------
# Powers, division by zero, overflow


def test_real_power_of_a_negative_base_is_refused(tmp_path):
    err = spec_error(tmp_path, "extends sp\nhidden { lr = (-8)^(2/3) }\n")
    located(err, 2, 15)
    assert "negative number raised to the power 2/3" in err.message
    err = spec_error(tmp_path, "extends sp\nhyper neg = -8\nhidden { lr = eta0 * neg^(1/3) }\n")
    located(err, 3, 22)
    spec = tmp_path / "ok.param"
    spec.write_text("extends sp\nhidden { lr = eta0 * (-2)^2; mult = -(8^(1/3)) }\n")   # integer powers are fine
    load_spec(str(spec))


def test_gamma0_zero_on_mean_field_is_a_spec_error():
    with within(1.0), pytest.raises(SpecError) as info:
        load_spec("mean_field", {"gamma0": "0"})
    err = info.value
    assert err.pos.path.endswith("mean_field.param") and "'gamma' is 0" in err.message
    assert "gamma0 = 0 here" in err.render() and "--set gamma0=0" in err.render()
    result = cli("explain", "mean_field", "--set", "gamma0=0")
    assert result.exit_code == 2 and "mean_field.param:" in result.output


@pytest.mark.parametrize("setting,fragment", [
    ("network { gamma = width^1000 }", "exponent 1000 out of range"),
    ("network { attention = d_head^5000 }", "exponent 5000 out of range"),
    ("hidden { lr = eta0 * width^40 * width^40 }", "ends up raised to the power 80"),
    ("hidden { lr = eta0 * width^(1/1000000000000000) }", "exponent out of range"),
    ("hidden { lr = 1e300 * 1e300 }", "out of float range"),
    ("hidden { lr = eta0 / (eta0 * 0) }", "division by zero"),
    ("hidden { lr = 1e-300 ^ 2 }", "out of float range"),
])
def test_overflow_and_division_by_zero_at_check_time(tmp_path, setting, fragment):
    err = spec_error(tmp_path, "extends sp\n" + setting + "\n")
    located(err, 2)
    assert fragment in err.message + (err.hint or ""), err.render()


def test_overflow_at_given_sizes_is_located_at_the_rule(tmp_path):
    path = tmp_path / "big.param"
    path.write_text(f"extends sp\nnetwork {{\n  gamma = width^{MAX_EXPONENT}\n}}\n")
    spec = load_spec(str(path))            # fine at check time: the sizes are symbolic
    gamma = network(spec, "sgd").gamma
    assert gamma.evaluate({"width": 2.0}) == 2.0**MAX_EXPONENT
    with within(1.0), pytest.raises(EvaluationError) as info:
        gamma.evaluate({"width": 2.0**17})
    err = info.value
    assert isinstance(err, SpecError) and isinstance(err, OverflowError)
    assert (err.pos.path, err.pos.line, err.pos.col) == (spec.path, 3, 11), err.render()
    assert "beyond the largest float" in err.message
    # intermediate factors out of range, the product in range: computed, not refused
    m = Monomial(1.0, {"width": Fraction(60), "fan_in": Fraction(-60)})
    assert m.evaluate({"width": 2.0**20, "fan_in": 2.0**19}) == pytest.approx(2.0**60)
    with pytest.raises(EvaluationError):
        Monomial(1.0, {"width": Fraction(-1)}).evaluate({"width": 0.0})


@pytest.mark.slow
def test_compile_reports_overflow_at_sizes_without_a_traceback(tmp_path):
    path = tmp_path / "big.param"
    path.write_text(f"extends sp\nnetwork {{ gamma = width^{MAX_EXPONENT} }}\n")
    result = cli("compile", str(path), MODEL, "--width", str(2**17), "--meta")
    assert result.exit_code == 2, result.output
    assert "cannot be evaluated" in result.output


@pytest.mark.parametrize("setting,fragment,hint", [
    ("hidden { init = normal(std = -1) }", "std is negative", "0 or positive"),
    ("hidden { init = uniform(std = -1 * fan_in^(-1/2)) }", "std is negative", "0 or positive"),
    ("hidden { init = keep * -2 }", "factor is negative", "0 or positive"),
    ("hidden { init = const(value = 1e300) }", "does not fit in a float32", "3.403e+38"),
    ("hidden { init = normal(std = 1e39) }", "does not fit in a float32", "3.403e+38"),
    ("network { tau = -1 }", "'tau' is negative", "0 or positive"),
    ("hidden { wd = -1 }", "'wd' is negative", "0 or positive"),
    ("adam { hidden { eps = -1e-8 } }", "'eps' is negative", "0 or positive"),
    ("hidden { lr = -eta0 }", "'lr' is negative", "0 or positive"),
    ("hidden { mult = 0 * width }", "'mult' is 0", "non-zero"),
    ("network { gamma = -1 }", "'gamma' is negative", "positive"),
    ("network { branch = 0 }", "'branch' is 0", "non-zero"),
    ("network { attention = 0 * keep }", "'attention' is 0", "positive"),
    ("network { alpha = 100 }", "'alpha' is 100", f"at most {MAX_EXPONENT}"),
])
def test_nonsense_values_are_refused_at_check_time(tmp_path, setting, fragment, hint):
    err = spec_error(tmp_path, "extends sp\n" + setting + "\n")
    located(err, 2)
    assert fragment in err.message and hint in (err.hint or ""), err.render()


def test_a_negative_value_from_set_names_the_override():
    with pytest.raises(SpecError) as info:
        load_spec("sp", {"eta0": -1})
    assert info.value.pos.path.endswith("sp.param") and "'lr' is negative" in info.value.message
    assert "eta0 = -1 here" in info.value.render()


# ---------------------------------------------------------------------------------------------------------
# Globs


def test_a_backtracking_glob_is_matched_in_linear_time(tmp_path):
    glob = "**?**?**?**?**?**?**?**?**?**?Z"
    path = tmp_path / "glob.param"
    path.write_text(f'extends sp\n"{glob}" {{ lr = eta0 }}\n')
    spec = load_spec(str(path))
    matcher = glob_matcher(glob)
    with within(0.5):
        assert matcher.match("a" * 200) is None
        assert matcher.match("ab.cd." * 30 + "xZ") is True
    from mupdsl.spec.resolve import resolve_settings
    with within(0.5):
        resolve_settings(spec, "sgd", "blocks." * 20 + "weight", "hidden")


@pytest.mark.parametrize("glob,fragment,col", [
    ("[z-a]", "range 'z-a' runs backwards", 4),
    ("[]", "empty character class", 2),
    ("[!]", "empty character class", 2),
    ("a]", "']' without a matching '['", 3),
    ("a" * 300, "name glob too long", 1),
])
def test_bad_globs_are_located(tmp_path, glob, fragment, col):
    err = spec_error(tmp_path, f'extends sp\n"{glob}" {{ lr = eta0 }}\n')
    located(err, 2, col)
    assert fragment in err.message


# ---------------------------------------------------------------------------------------------------------
# Size and speed


def _big_spec(size: int) -> str:
    lines = ["spec big", "hyper eta0 = 0.1", "hyper wd0 = 0"]
    n, total = 0, 0
    while total < size:
        n += 1
        line = (f'hidden "blocks.{n}.attn.q*.weight" {{ init = normal(std = 0.02 * fan_in^(-1/2)); mult = 1; '
                f"lr = eta0 * width_mult^(-1) * depth_mult^(-1/2); wd = wd0 }}")
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines) + "\n"


def test_a_large_spec_is_checked_quickly(tmp_path):
    path = tmp_path / "large.param"
    path.write_text(_big_spec(200_000))
    start = time.perf_counter()
    spec = load_spec(str(path))
    assert time.perf_counter() - start < 10.0   # a hang guard; the speed figure is bench/fuzz_bench.py's
    assert len(spec.rules) > 1000


def test_a_file_over_the_size_limit_is_refused_at_once(tmp_path):
    path = tmp_path / "huge.param"
    path.write_bytes(b"#" * (3 * 1024 * 1024))
    err = spec_error(tmp_path, path.read_bytes(), name="huge.param")
    assert "too large" in err.message and "2 MiB" in err.message


@pytest.mark.slow
def test_a_1mb_spec_is_checked_in_2s_and_300mb(tmp_path):
    path = tmp_path / "large.param"
    path.write_text(_big_spec(1_000_000))
    # peak memory from /proc (VmHWM): ru_maxrss would include the forking pytest process's own peak
    code = ("import re, sys, time; from mupdsl.spec import load_spec; t = time.perf_counter(); "
            "load_spec(sys.argv[1]); elapsed = time.perf_counter() - t; "
            "peak = re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1); "
            "print(elapsed, int(peak) / 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    seconds, megabytes = map(float, out.stdout.split())
    assert seconds < 2.0 and megabytes < 300, (seconds, megabytes)


# ---------------------------------------------------------------------------------------------------------
# Command-line flags


@pytest.mark.parametrize("args,flag,says", [
    (("compile", "mup", MODEL, "--width", "64", "--base-width", "0"), "--base-width 0", "positive"),
    (("compile", "mup", MODEL, "--width", "64", "--base-width", "-8"), "--base-width -8", "positive"),
    (("compile", "mup", MODEL, "--width", "0"), "--width 0", "positive"),
    (("compile", "mup", MODEL, "--width", "64", "--depth", "0"), "--depth 0", "positive"),
    (("compile", "mup", MODEL, "--width", "64", "--depth", "-3"), "--depth -3", "positive"),
    (("compile", "mup", MODEL, "--width", str(2**40)), f"--width {2**40}", "at most"),
    (("compile", "mup", MODEL, "--width", "64", "--seed", "-1"), "--seed -1", "[0, 2^63)"),
    (("compile", "mup", MODEL, "--width", "64", "--seed", str(2**63)), f"--seed {2**63}", "[0, 2^63)"),
    (("coordcheck", "mup", MODEL, "--tolerance", "-1"), "--tolerance -1", "positive"),
    (("coordcheck", "mup", MODEL, "--tolerance", "nan"), "--tolerance nan", "finite"),
    (("coordcheck", "mup", MODEL, "--widths", "64,64,128"), "--widths 64,64,128", "twice"),
    (("coordcheck", "mup", MODEL, "--extend", "40"), "--extend 40", "at most"),
    (("coordcheck", "mup", MODEL, "--device", "banana"), "--device banana", "unknown device"),
    (("coordcheck", "mup", MODEL, "--device", "cuda:9"), "--device cuda:9", "cuda"),
    (("coordcheck", "mup", MODEL, "--seeds", "0"), "--seeds 0", "positive"),
    (("sharpness", "mup", MODEL, "--width", "64", "--micro-batch", "0"), "--micro-batch 0", "positive"),
    (("sharpness", "mup", MODEL, "--width", "64", "--tol", "-1"), "--tol -1", "positive"),
    (("sharpness", "mup", MODEL, "--width", "64", "--train-steps", "-1"), "--train-steps -1", "at least 0"),
    (("sharpness", "mup", MODEL, "--width", "64", "-o", "adam"), "--train-steps", "1 or more"),
    (("sweep", str(ROOT / "runners" / "demo.toml"), "--tasks", "0"), "--tasks 0", "positive"),
    (("sweep", str(ROOT / "runners" / "demo.toml"), "--gpus-per-task", "-1"), "--gpus-per-task -1", "0 or more"),
])
def test_bad_flags_are_refused_up_front(args, flag, says):
    bad_flag(*args, flag=flag, says=says)


def test_unwritable_outputs_are_refused_before_any_work(tmp_path):
    missing = tmp_path / "no" / "such" / "folder"
    bad_flag("compile", "mup", MODEL, "--width", "64", "--out", str(missing / "plan.json"),
             flag="--out", says="does not exist")
    bad_flag("compile", "mup", MODEL, "--width", "64", "--emit-code", str(tmp_path / ("x" * 300 + ".py")),
             flag="--emit-code", says="longer than 255")
    bad_flag("sharpness", "mup", MODEL, "--width", "64", "--save-state", str(missing / "state.pt"),
             flag="--save-state", says="does not exist")
    blocker = tmp_path / "file"
    blocker.write_text("")
    bad_flag("sweep", str(ROOT / "runners" / "demo.toml"), "--out", str(blocker / "sub"), flag="--out",
             says="cannot write")
    bad_flag("demo", "--out", str(blocker), flag="--out", says="is a file")
    assert not (tmp_path / "no").exists()


# ---------------------------------------------------------------------------------------------------------
# Model files


MODEL_FILES = {
    "exit_on_import.py": ("import sys\nsys.exit(0)\n", "raised SystemExit(0)", 2),
    "exit_in_build.py": ("import sys\ndef build(width, depth=2):\n    sys.exit('bye')\n", "raised SystemExit('bye')", 3),
    "raise_on_import.py": ("def helper():\n    raise ValueError('boom')\nhelper()\n", "ValueError: boom", 2),
    "raise_in_build.py": ("def build(width, depth=2):\n    return 1 / 0\n", "ZeroDivisionError", 2),
}


@pytest.mark.parametrize("name", sorted(MODEL_FILES))
def test_a_model_file_that_exits_or_raises_is_reported_as_the_users(tmp_path, name):
    source, says, line = MODEL_FILES[name]
    (tmp_path / name).write_text(source)
    result = cli("compile", "mup", str(tmp_path / name), "--width", "8", "--meta")
    assert result.exit_code == 2, result.output
    assert says in result.output, result.output
    assert "traceback of your code" in result.output and f'{name}", line {line}' in result.output, result.output


MODEL_FILES["generator_exit.py"] = ("def build(width, depth=2):\n    raise GeneratorExit('x')\n", "raised GeneratorExit", 2)

EXAMPLES = {   # a model file whose example batch the model cannot take: the user's error, named as such
    "wrong_shape.py": "torch.randn(n, 7), torch.zeros(n, dtype=torch.long)",
    "a_string.py": "'hello', torch.zeros(n, dtype=torch.long)",
    "nan_inputs.py": "torch.full((n, 4), float('nan')), torch.zeros(n, dtype=torch.long)",
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_an_example_batch_the_model_cannot_take_is_named(tmp_path, name):
    (tmp_path / name).write_text(
        "import torch\nfrom torch import nn\n\ndef build(width, depth=2):\n"
        "    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 3))\n\n"
        f"def example_batch(n):\n    return {EXAMPLES[name]}\n")
    result = cli("compile", "mup", str(tmp_path / name), "--width", "16", "--base-width", "8")
    assert result.exit_code == 2, result.output
    assert "example inputs" in result.output and name in result.output, result.output


def test_an_example_batch_without_targets_is_named_where_training_needs_them(tmp_path):
    (tmp_path / "no_targets.py").write_text(
        "import torch\nfrom torch import nn\n\ndef build(width, depth=2):\n"
        "    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 3))\n\n"
        "def example_batch(n):\n    return torch.randn(n, 4)\n")
    result = cli("coordcheck", "mup", str(tmp_path / "no_targets.py"), "--widths", "8,16", "--steps", "1",
                 "--seeds", "1")
    assert result.exit_code == 2 and "(inputs, targets)" in result.output, result.output


def test_an_empty_model_name_and_an_overlong_spec_name_are_bad_input(tmp_path):
    result = cli("compile", "mup", "", "--width", "16", "--meta")
    assert result.exit_code == 2 and "no model given" in result.output, result.output
    result = cli("check", "b" * 300)
    assert result.exit_code == 2 and "no such spec file" in result.output, result.output
    (tmp_path / "long.param").write_text(f'extends "{"a" * 300}.param"\n')
    err = spec_error(tmp_path, f'extends "{"a" * 300}.param"\n', name="long.param")
    located(err, 1, 9)


def test_unicode_digits_are_not_numbers(tmp_path):
    err = spec_error(tmp_path, "hyper eta0 = \u0661\n")
    located(err, 1, 14)
    result = cli("explain", "mup", "--set", "eta0=\uff11")
    assert result.exit_code == 2 and "not a number" in result.output, result.output


def test_an_exponent_from_a_hyperparameter_keeps_the_limits(tmp_path):
    err = spec_error(tmp_path, "spec a\nextends mup\nhyper p = 1e-300\nhidden { lr = eta0 * width^p }\n")
    located(err, 4, 28)
    assert "simple fraction" in err.message
    err = spec_error(tmp_path, "spec a\nextends mup\nhyper p = 1e-300\nnetwork { alpha = p }\n")
    located(err, 4, 19)
    spec = load_spec(str(_write(tmp_path, "ok.param", "spec a\nextends mup\nhyper p = 1/3\n"
                                                       "hidden { lr = eta0 * width^p }\n")))
    assert spec.hypers["p"].value == Fraction(1, 3)


def _write(folder: Path, name: str, text: str) -> Path:
    (folder / name).write_text(text)
    return folder / name


def test_too_many_rules_are_refused_and_many_compile_quickly(tmp_path):
    from mupdsl.compile import compile_model
    from mupdsl.spec.limits import MAX_RULES

    rules = "".join(f'"l{i}.*" {{ lr = eta0 }}\n' for i in range(MAX_RULES))
    err = spec_error(tmp_path, "extends sp\n" + rules, name="many.param")
    assert "too many rules" in err.message and err.pos.line > MAX_RULES - 20
    (tmp_path / "some.param").write_text("extends sp\n" + "".join(f'"l{i}.*" {{ lr = eta0 }}\n' for i in range(4000)))
    with within(10):   # a hang guard: each glob is compiled once and rejects most names on its literal prefix
        compile_model(str(tmp_path / "some.param"), MODEL, width=16, base_width=8)


def test_set_with_two_specs_goes_to_the_specs_that_declare_it():
    result = cli("explain", "mup", "sp", "--set", "nope=1")
    assert result.exit_code == 2 and "neither" in result.output, result.output
    result = cli("explain", "mup", "sp", "--set", "eta0=-1")
    assert result.exit_code == 2 and "negative" in result.output, result.output


# ---------------------------------------------------------------------------------------------------------
# Experiment files


EXP = 'name = "x"\nspecs = ["mup"]\nmodel = "m"\nwidths = [16, 32]\nlrs = [0.1]\n'


def experiment_error(tmp_path: Path, data: str | bytes) -> ExperimentError:
    path = tmp_path / "exp.toml"
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    with within(1.0), pytest.raises(ExperimentError) as info:
        load_experiment(path)
    assert info.value.render().startswith(f"{path}:{info.value.line}: error: {info.value.key}: ")
    return info.value


@pytest.mark.parametrize("data,key,line,says", [
    (EXP.encode("utf-16"), "file", 1, "UTF-16"),
    (bytes(range(256)), "file", 2, "not UTF-8"),
    (EXP.replace("[0.1]", "[" * 3000 + "]" * 3000), "syntax", 5, "nest too deeply"),
    (EXP + 'device = "banana"\n', "device", 6, "unknown device 'banana'"),
    (EXP.replace("[0.1]", "[0.1, 0]"), "lrs", 5, "positive"),
    (EXP.replace("[0.1]", "[-0.1]"), "lrs", 5, "positive"),
    (EXP.replace("[0.1]", "[0.1, nan]"), "lrs", 5, "finite"),
    (EXP.replace("[0.1]", "[0.1, inf]"), "lrs", 5, "finite"),
    (EXP.replace("[0.1]", "[]"), "lrs", 5, "at least one"),
    (EXP.replace("[0.1]", "[0.1, 0.1]"), "lrs", 5, "twice"),
    (EXP.replace("[0.1]", "{ min = 0.1, max = 1.0, num = 1e8 }"), "lrs.num", 5, "integer"),   # 1e8 is a float
    (EXP.replace("[0.1]", "{ min = 0.1, max = 1.0, num = 100000000 }"), "lrs.num", 5, "1000"),
    (EXP.replace("[16, 32]", "[true, 32]"), "widths", 4, "integer"),
    (EXP.replace("[16, 32]", '["16", 32]'), "widths", 4, "integer"),
    (EXP + "threads = 2147483647\n", "threads", 6, "1,024"),
    (EXP + 'dataset = "linear"\ninput_dim = 2147483647\n', "input_dim", 7, "at most"),
    (EXP + "[measure]\ntop_k = 2147483647\n", "measure.top_k", 7, "10,000"),
    (EXP.replace("[0.1]", "[5e-324]"), "lrs", 5, "out of range"),
    (EXP.replace("[0.1]", "{ min = 5e-324, max = 1e-323, num = 5 }"), "lrs", 5, "out of range"),
    (EXP.replace("[0.1]", "{ min = 1.0, max = 0.1, num = 4 }"), "lrs", 5, "below max"),
    (EXP.replace("[0.1]", "{ start = 1e300, factor = 1.000001, floor = 1e-300 }"), "lrs", 5, "at most 1000"),
    (EXP + "seeds = [9223372036854775808]\n", "seeds", 6, "[0, 2^63)"),
    (EXP + "seeds = [-1]\n", "seeds", 6, "[0, 2^63)"),
    (EXP + "seeds = []\n", "seeds", 6, "at least one"),
    (EXP.replace("[16, 32]", "[16, 16]"), "widths", 4, "twice"),
    (EXP.replace("[16, 32]", "[16, 0]"), "widths", 4, "positive"),
    (EXP + "depths = [2, 2]\n", "depths", 6, "twice"),
    (EXP + "gammas = [0.0]\n", "gammas", 6, "positive"),
    (EXP.replace('"x"', '"' + "n" * 300 + '"'), "name", 1, "at most 200"),
    (EXP.replace('"x"', '"../x"'), "name", 1, "folder name"),
    (EXP.replace('"mup"', '"mpu"'), "specs", 2, "did you mean 'mup'"),
    (EXP + "steps = 99999999999999\n", "steps", 6, "at most"),
    (EXP + "[measure]\ntol = inf\n", "measure.tol", 7, "finite"),
])
def test_experiment_values_are_validated(tmp_path, data, key, line, says):
    err = experiment_error(tmp_path, data)
    assert (err.key, err.line) == (key, line), err.render()
    assert says in err.message, err.render()


def test_experiment_file_name_too_long(tmp_path):
    with pytest.raises(ExperimentError) as info:
        load_experiment(tmp_path / ("e" * 300 + ".toml"))
    assert info.value.key == "file" and "too long" in info.value.message.lower()


def test_a_missing_device_is_refused_before_the_sweep(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(EXP.replace('"m"', f'"{MODEL}"') + 'device = "cuda:9"\n')
    result = cli("sweep", str(path), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert "device" in result.output and "cuda:9" in result.output
    assert not (tmp_path / "out" / "store.sqlite").exists()


@pytest.mark.parametrize("data,key,line", [
    (EXP + "batch_size = 16\n[measure]\neval_every = 2\nbatch_size = 0\n", "measure.batch_size", 9),
    (EXP + "batch_size = 0\n[measure]\nbatch_size = 16\n", "batch_size", 6),
    (EXP + "measure.tol = -1\n", "measure.tol", 6),
    (EXP + '"steps" = 0\n', "steps", 6),
])
def test_experiment_errors_point_at_the_key_as_written(tmp_path, data, key, line):
    err = experiment_error(tmp_path, data)
    assert (err.key, err.line) == (key, line), err.render()


def test_a_gamma_sweep_names_a_gamma_its_specs_do_not_declare(tmp_path):
    err = experiment_error(tmp_path, EXP + 'gammas = [0.1, 1.0]\ngamma_name = "nonexistent"\n')
    assert (err.key, err.line) == ("gamma_name", 7) and "declares no hyperparameter" in err.message
