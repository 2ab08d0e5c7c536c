"""The check and explain commands, end to end, and the spec layer's independence from torch."""

import json
import os
import subprocess
import sys
import time

from click.testing import CliRunner

from mupdsl.cli import main
from mupdsl.spec import preset_names
from mupdsl.spec.build import PRESET_DIR

ROOT = PRESET_DIR.parent


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_check_all_presets_ok():
    result = run("check", *[str(PRESET_DIR / f"{n}.param") for n in preset_names()])
    assert result.exit_code == 0, result.output
    assert result.output.count("ok ") == len(preset_names())


def test_check_reports_every_bad_file(tmp_path):
    bad1, bad2 = tmp_path / "a.param", tmp_path / "b.param"
    bad1.write_text("hidden { lr = 1 ")
    bad2.write_text("hyper eta0 = 1\nhiden { lr = eta0 }\n")
    result = run("check", str(bad1), "mup", str(bad2))
    assert result.exit_code == 2
    assert "a.param:1:17: error: unexpected end of file" in result.output
    assert "b.param:2:1: error: unknown role 'hiden'" in result.output
    assert "Traceback" not in result.output


def test_explain_json_and_equivalence():
    result = run("explain", "mup", "--optimizer", "adam", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    hidden = doc["optimizers"]["adam"]["roles"]["hidden"]
    assert (hidden["a"], hidden["b"], hidden["c"]) == ("0", "1/2", "1")
    result = run("explain", "mup", "sp", "--json")
    doc = json.loads(result.output)
    assert doc["equivalent"] == {"sgd": False, "adam": False}
    result = run("explain", "depth_mup_k1", "depth_mup_k2", "--json")
    assert json.loads(result.output)["equivalent"] == {"sgd": True, "adam": True}


def test_explain_table_names_symmetry_class():
    result = run("explain", "depth_mup_k1", "-o", "adam")
    assert result.exit_code == 0
    assert "equivalent to depth_mup_k2" in result.output
    assert "residual hidden" in result.output


def test_bad_set_is_bad_input():
    result = run("explain", "mup", "--set", "eta=1")
    assert result.exit_code == 2
    assert "did you mean 'eta0'" in result.output


def test_spec_layer_does_not_import_torch_and_is_fast():
    code = ("import sys, time; t = time.perf_counter(); "
            "from mupdsl.spec import load_spec, preset_names; [load_spec(n) for n in preset_names()]; "
            "from mupdsl import cli; "
            "assert 'torch' not in sys.modules, 'spec layer imported torch'; print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "mupdsl.cli", "check", *[f"specs/{n}.param" for n in preset_names()]],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ})
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert elapsed < 5  # generous on a loaded CI machine; measured ~0.35 s wall, see the issue note


def test_check_refuses_hostile_files_fast_and_located(tmp_path):
    """The issue's fault-injection cases through the command: located errors, exit 2, no traceback, quickly."""
    cases = {
        "digits.param": ("hyper eta0 = " + "1" * 5000 + "\n", "digits.param:1:14: error: number too long"),
        "exponent.param": ("hyper eta0 = 1e100000000\n", "exponent.param:1:14: error: number out of range"),
        "formfeed.param": ("hyper eta0 = 1\n\fhidden { lr = eta0 * }\n", "formfeed.param:2:23: error: unexpected '}'"),
        "negative.param": ("extends sp\nhidden { lr = (-8)^(2/3) }\n",
                           "negative.param:2:15: error: negative number raised to the power 2/3"),
        "deep.param": ("hyper eta0 = 1\nhidden { lr = " + "(" * 5000 + "eta0" + ")" * 5000 + " }\n",
                       "deep.param:2:115: error: expression nested too deeply"),
    }
    for name, (text, _) in cases.items():
        (tmp_path / name).write_text(text)
    start = time.perf_counter()
    result = run("check", *[str(tmp_path / name) for name in cases])
    assert time.perf_counter() - start < 5
    assert result.exit_code == 2 and "Traceback" not in result.output
    for _, expected in cases.values():
        assert expected in result.output, result.output
