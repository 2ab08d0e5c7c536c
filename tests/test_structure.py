"""The package's shape: imports point one way between the packages (cli → sweep → measure → train → compile →
spec) and form no circle inside one (function-level imports count); importing the library leaves matplotlib's
backend and the caller's random state alone; model files are imported by content."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent / "mupdsl"
LAYERS = ["spec", "compile", "train", "measure", "sweep", "cli"]
"""Lowest first: a package may import only from packages before it (optim, data, models, theory are leaves that
import nothing of the layers above spec's users)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every mupdsl module ``path`` imports, at any level of the file (lazy imports included)."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("mupdsl"):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mupdsl"))
    modules = {module_name(p) for p in ROOT.rglob("*.py")}
    return {m for m in found if m in modules} - {module_name(path)}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in ROOT.rglob("*.py")}


def layer(module: str) -> str | None:
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else None
    if name in ("cli_input", "cli_output", "demo"):
        return "cli"
    return name if name in LAYERS else None


def test_packages_import_downwards_only():
    wrong = []
    for module, targets in graph().items():
        here = layer(module)
        for target in targets:
            there = layer(target)
            if here and there and LAYERS.index(there) > LAYERS.index(here):
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


@pytest.mark.parametrize("package", ["sweep", "measure", "train", "compile", "spec"])
def test_no_import_circle_inside_a_package(package):
    g = {m: {t for t in ts if t.startswith(f"mupdsl.{package}.")} for m, ts in graph().items()
         if m.startswith(f"mupdsl.{package}.")}
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(m):] + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for t in g.get(m, ()):
            visit(t, path + [m])
        state[m] = 2

    for m in g:
        visit(m, [])


def test_no_private_name_is_imported_across_modules():
    wrong = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("mupdsl")):
                wrong += [f"{module_name(path)}: {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not wrong, wrong


def test_importing_the_library_leaves_the_matplotlib_backend_alone():
    code = ("import matplotlib; matplotlib.use('svg'); import mupdsl.sweep, mupdsl.measure, mupdsl.cli, mupdsl.demo;"
            "from mupdsl.sweep import plots; print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "svg"


def test_compiling_and_coordchecking_leave_the_callers_random_state(tmp_path):
    from mupdsl.compile import compile_model
    from mupdsl.measure import coordcheck

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    compiled = compile_model("mup", "mupdsl.models.mlp", width=32, base_width=16, seed=7)
    compiled.reinitialize(8)
    coordcheck("mup", "mupdsl.models.mlp", widths=(16, 32), steps=1, seeds=1)
    assert torch.equal(torch.rand(3), expected)


def test_an_edited_model_file_is_imported_again(tmp_path):
    from mupdsl.compile import load_factory

    path = tmp_path / "net.py"
    path.write_text("from torch import nn\ndef build(width, depth=None):\n    return nn.Linear(4, width)\n")
    assert load_factory(str(path)).build(8, None).out_features == 8
    path.write_text("from torch import nn\ndef build(width, depth=None):\n    return nn.Linear(4, 2 * width)\n")
    assert load_factory(str(path)).build(8, None).out_features == 16
