"""Property: any text gives a spec or the project's own located error — never anything else."""

import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from mupdsl.spec import SpecError, load_spec, preset_names
from mupdsl.spec.build import PRESET_DIR

PRESETS = {name: (PRESET_DIR / f"{name}.param").read_text() for name in preset_names()}
PIECES = ["{", "}", "(", ")", "=", "^", "*", "/", "-", ";", '"', "#", "\n", " ", "1/2", "0", "hidden", "lr",
          "eta0", "extends", "hyper", "set", "adam", "network", "residual", '"blocks.*"', "fan_in", "^-1/2",
          "keep", "zero", "normal(std = 1)", "default", "spec", "\x00", "é", "[", "]", "**", "1e999"]


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
    try:
        load_spec(str(path))
    except SpecError as exc:
        rendered = exc.render()
        assert exc.pos.line >= 1 and exc.pos.col >= 1, rendered
        assert rendered.startswith(f"{exc.pos.path}:{exc.pos.line}:{exc.pos.col}: error: "), rendered


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(PRESETS)), seed=st.integers(0, 2**32 - 1), edits=st.integers(1, 4))
def test_mutated_presets_give_spec_or_located_error(name, seed, edits):
    text = mutate(PRESETS[name], random.Random(seed), edits)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.param"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        check_one(path)


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(st.sampled_from(PIECES), max_size=40))
def test_random_token_soup(pieces):
    text = " ".join(pieces)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "soup.param"
        path.write_text(text, encoding="utf-8")
        check_one(path)


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
