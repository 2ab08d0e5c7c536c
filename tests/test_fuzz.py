"""Property: any input gives a result or the project's own located error — never anything else, never slowly.

Specs (mutated presets, token soup, generated specs), command-line flags and experiment files: every failure is
a SpecError (``file:line:col``), an ExperimentError (``file:line: key``) or a usage error with exit code 2; no
traceback; no case over a second (SIGALRM). The fast parser and Lark build the same tree for every input the
fast parser accepts. The default suite runs a few hundred cases in a few seconds; ``-m slow`` runs over 10,000.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st
from lark import Token

from helpers import within as time_limit
from mupdsl.cli import main
from mupdsl.spec import SpecError, load_spec, preset_names
from mupdsl.spec.build import PRESET_DIR
from mupdsl.spec.errors import source_line
from mupdsl.spec.parsing import Bail, Fail, FastParser
from mupdsl.spec.syntax import parser
from mupdsl.sweep.experiment import Experiment, ExperimentError
from mupdsl.sweep.experiment_file import load_experiment

PRESETS = {name: (PRESET_DIR / f"{name}.param").read_text() for name in preset_names()}
PIECES = ["{", "}", "(", ")", "=", "^", "*", "/", "-", ";", '"', "#", "\n", " ", "1/2", "0", "hidden", "lr",
          "eta0", "extends", "hyper", "set", "adam", "network", "residual", '"blocks.*"', "fan_in", "^-1/2",
          "keep", "zero", "normal(std = 1)", "default", "spec", "\x00", "é", "[", "]", "**", "1e999",
          # hostile pieces (the fault-injection run)
          "1" * 120, "1e100000000", "1e-400", "(" * 120, "-" * 120, "^1000", "^(1/3)", "(-8)^(2/3)", "\f", "\v",
          "\r", "\r\n", "\x1c", "\x85", "\u2028", "\u2029", "\ufeff", "\t", '"**?**?**?**?**?**?Z"', '"[z-a]"',
          '"[]"', "const(value = 1e300)", "normal(std = -1)", "gamma = 0", "tau = -1", "alpha = 1e300",
          "width^64", " * eta0" * 50]
CASE_SECONDS = 1.0
ROOT = Path(__file__).resolve().parent.parent


def within(seconds: float = CASE_SECONDS):
    """A case's time limit (``helpers.within``) with the fuzz corpus's default of a second."""
    return time_limit(seconds)


def mutate(text: str, rng: random.Random, edits: int) -> str:
    for _ in range(edits):
        i = rng.randrange(len(text) + 1)
        kind = rng.randrange(4)
        if kind == 0:
            text = text[:i] + rng.choice(PIECES) + text[i:]
        elif kind == 1:
            text = text[:i] + text[i + rng.randrange(1, 12):]
        elif kind == 2:
            j = rng.randrange(len(text) + 1)
            a, b = sorted((i, j))
            text = text[:a] + text[b:] + text[a:b]
        else:
            text = text[:i] + chr(rng.randrange(32, 0x250)) + text[i:]
    return text


def check_one(path: Path) -> None:
    """A spec or a located SpecError, within a second; the excerpt shows the error's own line, printably."""
    try:
        with within():
            load_spec(str(path))
    except SpecError as exc:
        rendered = exc.render()
        assert exc.pos.line >= 1 and exc.pos.col >= 1, rendered
        assert rendered.startswith(f"{exc.pos.path}:{exc.pos.line}:{exc.pos.col}: error: "), rendered
        assert all(ch == "\n" or ch.isprintable() for ch in rendered), repr(rendered)
        excerpt = rendered.split("\n")[1] if "\n" in rendered else ""
        if excerpt.startswith(f"{exc.pos.line:>5} | ") and exc.source is not None:
            line = source_line(exc.source, exc.pos.line)
            shown = len(excerpt) - len(f"{exc.pos.line:>5} | ")
            assert line is not None and shown == (len(line) if len(line) <= 160 else shown), rendered
            assert shown <= 162, rendered   # a long line is cut around the caret
            caret = rendered.split("\n")[2]
            assert caret.strip().startswith("| ") and "^" in caret, rendered


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text, encoding="utf-8", errors="surrogatepass", newline="")
    return path


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(PRESETS)), seed=st.integers(0, 2**32 - 1), edits=st.integers(1, 4))
def test_mutated_presets_give_spec_or_located_error(name, seed, edits):
    text = mutate(PRESETS[name], random.Random(seed), edits)
    with tempfile.TemporaryDirectory() as tmp:
        check_one(write(Path(tmp), f"{name}.param", text))


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(st.sampled_from(PIECES), max_size=40))
def test_random_token_soup(pieces):
    text = " ".join(pieces)
    with tempfile.TemporaryDirectory() as tmp:
        check_one(write(Path(tmp), "soup.param", text))


def test_deep_nesting_is_an_error_not_a_crash(tmp_path):
    path = tmp_path / "deep.param"
    path.write_text("hyper eta0 = 1\nhidden { lr = " + "(" * 5000 + "eta0" + ")" * 5000 + " }\n")
    check_one(path)


def test_cli_check_on_a_hundred_mutants(tmp_path):
    rng = random.Random(20261122)
    paths = []
    for i in range(100):
        name = rng.choice(sorted(PRESETS))
        while True:
            text = mutate(PRESETS[name], rng, rng.randrange(1, 4))
            candidate = tmp_path / f"m{i:03d}_{name}.param"
            candidate.write_text(text, encoding="utf-8")
            try:
                load_spec(str(candidate))
            except SpecError:
                break  # keep only mutants that are bad, as the check does
        paths.append(candidate)
    exe = [sys.executable, "-m", "mupdsl.cli", "check", *map(str, paths)]
    result = subprocess.run(exe, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    for path in paths:
        assert f"{path.name}:" in result.stderr
    located = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(located) == 100
    for line in located:
        file_part = line.split(": error: ")[0]
        _, lineno, col = file_part.rsplit(":", 2)
        assert int(lineno) >= 1 and int(col) >= 1, line


# ---------------------------------------------------------------------------------------------------------
# Generated specs: the fast parser and Lark agree


NUMBERS = ["0", "1", "2", "0.5", ".5", "1.", "1e-3", "2E+2", "3.25e1", "007", "1e-8", "10"]
NAMES = ["eta0", "wd0", "width", "fan_in", "fan_in_mult", "depth_mult", "gamma", "alpha", "d_head", "k", "x_1"]
SPACE = [" ", "  ", "\t", "\n", " \f ", "\r\n", "\n# comment ~ é \u2028\n", "\r"]


class Gen:
    """Random text that is (mostly) in the grammar: every statement, block head, setting, call and expression
    form, with numbers, comments and line breaks of every kind."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def ws(self) -> str:
        return self.rng.choice(SPACE) if self.rng.random() < 0.3 else " "

    def exp_atom(self, depth: int) -> str:
        r = self.rng.random()
        if depth > 3 or r < 0.4:
            return self.rng.choice(NUMBERS)
        if r < 0.6:
            return self.rng.choice(NAMES)
        if r < 0.75:
            return "-" + self.exp_atom(depth + 1)
        return "(" + self.exp_sum(depth + 1) + ")"

    def exp_sum(self, depth: int) -> str:
        out = self.exp_atom(depth)
        for _ in range(self.rng.randrange(3)):
            out += self.ws() + self.rng.choice("+-*/") + self.ws() + self.exp_atom(depth)
        return out

    def expr(self, depth: int = 0) -> str:
        out = self.unary(depth)
        for _ in range(self.rng.randrange(4)):
            out += self.ws() + self.rng.choice("*/") + self.ws() + self.unary(depth)
        return out

    def unary(self, depth: int) -> str:
        signs = "-" * (self.rng.random() < 0.15)
        atom = self.atom(depth)
        if self.rng.random() < 0.3:
            atom += "^" + self.exp_atom(depth + 1)
        return signs + atom

    def atom(self, depth: int) -> str:
        r = self.rng.random()
        if depth > 3 or r < 0.45:
            return self.rng.choice(NAMES)
        if r < 0.8:
            return self.rng.choice(NUMBERS)
        return "(" + self.ws() + self.expr(depth + 1) + self.ws() + ")"

    def value(self) -> str:
        if self.rng.random() < 0.2:
            args = [f"{self.rng.choice(['std', 'value'])} = {self.expr()}" for _ in range(self.rng.randrange(3))]
            return self.rng.choice(["normal", "uniform", "const", "f"]) + "(" + ", ".join(args) + ")"
        return self.expr()

    def head(self) -> str:
        words = self.rng.choice([["hidden"], ["residual", "hidden"], ["default"], ["adam"], ["network"], ["sgd"],
                                 ["residual"], []])
        glob = '"' + self.rng.choice(["blocks.*.q", "**", "a?", "[ab]c", "x"]) + '"'
        if not words or self.rng.random() < 0.3:
            words = words + [glob]
        return " ".join(words)

    def block(self, depth: int = 0) -> str:
        items = []
        for _ in range(self.rng.randrange(4)):
            r = self.rng.random()
            if r < 0.7 or depth > 0:
                items.append(self.rng.choice(["lr", "mult", "init", "wd", "gamma", "tau"]) + " = " + self.value())
            elif r < 0.85:
                items.append(self.block(depth + 1))
            else:
                items.append(";")
        sep = self.rng.choice(["; ", self.ws(), "\n"])
        return self.head() + self.ws() + "{" + self.ws() + sep.join(items) + self.ws() + "}"

    def spec(self) -> str:
        items = []
        for _ in range(self.rng.randrange(1, 8)):
            r = self.rng.random()
            if r < 0.1:
                items.append("spec " + self.rng.choice(["a", "mine"]))
            elif r < 0.15:
                items.append("extends " + self.rng.choice(["sp", '"sp.param"']))
            elif r < 0.4:
                items.append(self.rng.choice(["hyper", "set"]) + " " + self.rng.choice(NAMES) + " = " + self.expr())
            elif r < 0.95:
                items.append(self.block())
            else:
                items.append(";")
        return self.rng.choice(["", "# header\n", "\ufeff"]) + "\n".join(items) + self.rng.choice(["", "\n"])


ATTRS = ("line", "column", "end_line", "end_column", "start_pos", "end_pos")


def same_tree(a, b) -> str | None:
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if isinstance(x, Token) or isinstance(y, Token):
            if not (isinstance(x, Token) and isinstance(y, Token) and x.type == y.type and str(x) == str(y)):
                return f"token {x!r} != {y!r}"
            for attr in ATTRS:
                if getattr(x, attr) != getattr(y, attr):
                    return f"token {x!r}: {attr} {getattr(x, attr)} != {getattr(y, attr)}"
            continue
        if x.data != y.data or len(x.children) != len(y.children):
            return f"tree {x.data}/{len(x.children)} != {y.data}/{len(y.children)}"
        if x.meta.empty != y.meta.empty:
            return f"{x.data}: empty meta differs"
        if not x.meta.empty:
            for attr in ATTRS:
                if getattr(x.meta, attr) != getattr(y.meta, attr):
                    return f"{x.data}: {attr} {getattr(x.meta, attr)} != {getattr(y.meta, attr)}"
        stack.extend(zip(x.children, y.children))
    return None


def parsers_agree(text: str) -> None:
    """The fast parser accepts exactly what Lark accepts (or defers to it), with the same tree."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")   # as the loader reads a file
    try:
        reference = parser().parse(text)
    except Exception:  # noqa: BLE001 - Lark rejects: the fast parser must not accept
        reference = None
    try:
        fast = FastParser(text, "x").parse()
    except (Fail, Bail, SpecError):  # refused, deferred to Lark, or over a limit
        return
    assert reference is not None, f"the fast parser accepts what Lark rejects: {text!r}"
    difference = same_tree(reference, fast)
    assert difference is None, f"{difference} in {text!r}"


def spec_cases(count: int, seed: int):
    rng = random.Random(seed)
    gen = Gen(rng)
    for i in range(count):
        if i % 3 == 0:
            yield mutate(gen.spec(), rng, rng.randrange(0, 3))
        elif i % 3 == 1:
            yield gen.spec()
        else:
            yield mutate(PRESETS[rng.choice(sorted(PRESETS))], rng, rng.randrange(1, 5))


def run_spec_cases(tmp_path: Path, count: int, seed: int) -> None:
    (tmp_path / "sp.param").write_text(PRESETS["sp"])
    for i, text in enumerate(spec_cases(count, seed)):
        parsers_agree(text)
        check_one(write(tmp_path, f"g{i % 7}.param", text))


def test_generated_specs(tmp_path):
    run_spec_cases(tmp_path, 150, seed=1)


@pytest.mark.parametrize("text", [
    "hidden { lr = set }", "hidden { lr = b set = 1 }", "spec set", "hyper set = 1", "extends hyper",
    "hidden { adam { x = 1 } set = 2 }", "hidden spec { lr = 1 }", "network { set = 1 }", "set set = set",
    "hyper a = 1\nhidden { lr = a * spec }\nhyper b = 2", "hidden { lr = f(set = 1) }", "hidden { lr = x^(set + 1) }",
])
def test_keywords_used_as_names(text):
    """Lark's contextual lexer reads such a word as a name or as the keyword by its parse state; the fast parser
    defers each such statement to Lark, so both give the same tree or the same error."""
    from mupdsl.spec.parsing import parse  # noqa: PLC0415
    from mupdsl.spec.syntax import lark_parse  # noqa: PLC0415

    for prefix in ("", "hyper q = 1\n"):
        try:
            reference, ref_error = lark_parse(prefix + text, "x"), None
        except SpecError as exc:
            reference, ref_error = None, (exc.pos.line, exc.pos.col, exc.message, exc.hint)
        try:
            mine, my_error = parse(prefix + text, "x"), None
        except SpecError as exc:
            mine, my_error = None, (exc.pos.line, exc.pos.col, exc.message, exc.hint)
        assert my_error == ref_error
        assert reference is None or same_tree(reference, mine) is None


@pytest.mark.slow
def test_generated_specs_many(tmp_path):
    run_spec_cases(tmp_path, 6000, seed=2)


def errors_agree_in_a_large_file(count: int, seed: int) -> None:
    """In a file over the fast parser's small-file size, a syntax error is found by Lark from the statement before
    the failing one (or a keyword statement by Lark on its own): the same message, position and hint as Lark
    reading the whole file."""
    from mupdsl.spec.parsing import SMALL, parse  # noqa: PLC0415
    from mupdsl.spec.syntax import lark_parse  # noqa: PLC0415

    pad = "hyper pad = 1\nhidden { lr = 1 }\n" * (SMALL // 30 + 1)
    for text in spec_cases(count, seed):
        text = pad + text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
        try:
            lark_parse(text, "x")
            reference = None
        except SpecError as exc:
            reference = (exc.pos.line, exc.pos.col, exc.message, exc.hint)
        try:
            parse(text, "x")
            mine = None
        except SpecError as exc:
            if "too deeply" in exc.message or "too long" in exc.message:
                continue   # a limit, not a syntax error: Lark has none
            mine = (exc.pos.line, exc.pos.col, exc.message, exc.hint)
        assert mine == reference, (mine, reference, text[len(pad):])


def test_syntax_errors_in_a_large_file():
    errors_agree_in_a_large_file(4, seed=7)


@pytest.mark.slow
def test_syntax_errors_in_a_large_file_many():
    errors_agree_in_a_large_file(150, seed=8)


def test_the_parsers_agree_on_every_preset():
    for text in PRESETS.values():
        parsers_agree(text)
        assert same_tree(parser().parse(text), FastParser(text, "x").parse()) is None


# ---------------------------------------------------------------------------------------------------------
# Command-line flags


INTS = ["0", "-1", "-3", "1", "2", "8", "64", "2147483648", str(2**63), "99999999999999999999", "1.5", "x", ""]
FLOATS = ["0", "-1", "1e-4", "0.25", "nan", "inf", "-inf", "1e400", "x"]
DEVICES = ["cpu", "cuda", "cuda:9", "banana", "mps", "auto", "", "cuda:-1"]
SETS = ["eta0=0.1", "eta0=-1", "eta0=1e400", "eta0=nan", "eta0=1/0", "gamma0=0", "eta=1", "noequals", "eta0=",
        "wd0=-1", "eps0=1e-999", "eta0=" + "9" * 200]
BAD = {  # one of these makes every generated command line bad input, so no case starts real work
    "compile": [("--width", "0"), ("--base-width", "0"), ("--depth", "-3"), ("--seed", "-1"),
                ("--out", "/nonexistent/dir/plan.json"), ("--width", "x")],
    "coordcheck": [("--tolerance", "-1"), ("--tolerance", "nan"), ("--widths", "64,64"), ("--device", "banana"),
                   ("--seeds", "0"), ("--extend", "99"), ("--widths", "0,1"), ("--steps", "0")],
    "sharpness": [("--micro-batch", "0"), ("--tol", "-1"), ("--top-k", "0"), ("--batch-size", "0"),
                  ("--save-state", "/nonexistent/dir/s.pt"), ("--seed", str(2**63))],
}
FLAGS = {
    "compile": {"--width": INTS, "--base-width": INTS, "--depth": INTS, "--base-depth": INTS, "--seed": INTS,
                "--set": SETS, "--optimizer": ["sgd", "adam", "lion"]},
    "coordcheck": {"--widths": ["64,128", "64,64", "0,8", "a,b", "8"], "--base-width": INTS, "--steps": INTS,
                   "--seeds": INTS, "--batch-size": INTS, "--tolerance": FLOATS, "--extend": INTS,
                   "--device": DEVICES, "--set": SETS, "--data": ["example", "nope"]},
    "sharpness": {"--width": INTS, "--base-width": INTS, "--batch-size": INTS, "--train-steps": INTS,
                  "--top-k": INTS, "--tol": FLOATS, "--trace-samples": INTS, "--micro-batch": INTS,
                  "--seed": INTS, "--set": SETS, "--optimizer": ["sgd", "adam"]},
}
SPECS = ["mup", "sp", "mean_field", "nope", "/nonexistent.param"]


def flag_cases(count: int, seed: int):
    rng = random.Random(seed)
    for i in range(count):
        r = i % 4
        if r == 0:   # explain and check run fully: they are cheap
            args = ["explain", rng.choice(SPECS)]
            for _ in range(rng.randrange(3)):
                args += ["--set", rng.choice(SETS)]
            if rng.random() < 0.3:
                args += ["-o", rng.choice(["sgd", "adam", "adamw", "lion"])]
            yield args, False
            continue
        command = rng.choice(sorted(FLAGS))
        args = [command, rng.choice(SPECS), "mupdsl.models.mlp"]
        if command in ("compile", "sharpness"):
            args += ["--width", rng.choice(["16", "64"])]
        for _ in range(rng.randrange(4)):
            flag = rng.choice(sorted(FLAGS[command]))
            args += [flag, rng.choice(FLAGS[command][flag])]
        args += list(rng.choice(BAD[command]))   # last: click keeps the last value of a repeated option
        yield args, True


def run_flag_cases(count: int, seed: int) -> None:
    runner = CliRunner()
    for args, must_fail in flag_cases(count, seed):
        start = time.perf_counter()
        with within():
            result = runner.invoke(main, args)
        assert "Traceback" not in result.output, (args, result.output)
        if result.exception is not None:
            assert isinstance(result.exception, SystemExit), (args, repr(result.exception))
        assert result.exit_code in ((2,) if must_fail else (0, 2)), (args, result.exit_code, result.output)
        assert time.perf_counter() - start < CASE_SECONDS


def test_generated_flags():
    run_flag_cases(120, seed=3)


@pytest.mark.slow
def test_generated_flags_many():
    run_flag_cases(2500, seed=4)


# ---------------------------------------------------------------------------------------------------------
# Experiment files


BASE_EXPERIMENT = {
    "name": "x", "specs": ["mup", "sp"], "model": "mupdsl.models.mlp", "widths": [16, 32], "lrs": [0.1, 0.2],
    "seeds": [0], "steps": 10, "device": "cpu",
}
VALUES = [0, -1, 1, 2**63, 2**64, -(2**63), 10**30, 0.0, -0.0, 1e-300, 1e308, math.nan, math.inf, -math.inf, "",
          "x" * 300, "../x", "cuda:9", "banana", "mup", "é\u2028", True, [], [0], [1, 1], [0.1, math.nan], [[[1]]],
          {"min": 0.1, "max": 1.0, "num": 4}, {"min": 0.1, "max": 1.0, "num": 10**8}, {"min": 1, "max": 0.1, "num": 3},
          {"start": 1e300, "factor": 1.0000001, "floor": 1e-300}, {"start": 1.0}, {"x": 1}, [16, 16], [64, 0]]
KEYS = ["name", "specs", "model", "widths", "lrs", "seeds", "steps", "device", "gammas", "depths", "base_width",
        "batch_size", "optimizer", "dataset", "threads", "measure", "coordcheck_widths", "unknown_key"]


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\u2028", "\\u2028") + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"


def experiment_cases(count: int, seed: int):
    rng = random.Random(seed)
    for i in range(count):
        doc = dict(BASE_EXPERIMENT)
        for _ in range(rng.randrange(1, 3)):
            key = rng.choice(KEYS)
            if rng.random() < 0.15:
                doc.pop(key, None)
            else:
                doc[key] = rng.choice(VALUES)
        text = "".join(f"{k} = {toml_value(v)}\n" for k, v in doc.items())
        kind = i % 5
        if kind == 3:
            text = mutate(text, rng, rng.randrange(1, 4))
        if kind == 4:
            choice = rng.randrange(4)
            data = (text.encode("utf-16") if choice == 0 else bytes(rng.randrange(256) for _ in range(200))
                    if choice == 1 else ("a = " + "[" * 2000 + "]" * 2000 + "\n" + text).encode()
                    if choice == 2 else b"\xef\xbb\xbf" + text.encode())
        else:
            data = text.encode("utf-8", errors="surrogatepass")
        yield data


def run_experiment_cases(tmp_path: Path, count: int, seed: int) -> None:
    path = tmp_path / "exp.toml"
    for data in experiment_cases(count, seed):
        path.write_bytes(data)
        try:
            with within():
                exp = load_experiment(path)
        except ExperimentError as exc:
            rendered = exc.render()
            assert rendered.startswith(f"{path}:{exc.line}: error: {exc.key}: "), rendered
            assert exc.line >= 0 and exc.key and exc.message, rendered
            continue
        assert isinstance(exp, Experiment)
        values = exp.lr_values()
        assert values and len(values) <= 1000 and all(math.isfinite(v) and v > 0 for v in values)
        assert len(set(exp.widths)) == len(exp.widths) and all(0 <= s < 2**63 for s in exp.seeds)


def test_generated_experiments(tmp_path):
    run_experiment_cases(tmp_path, 150, seed=5)


@pytest.mark.slow
def test_generated_experiments_many(tmp_path):
    run_experiment_cases(tmp_path, 3000, seed=6)
