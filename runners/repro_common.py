"""Shared by the reproduction runners (``runners/repro_s2.py``, ``runners/repro_s4.py``): run an experiment file
through ``mupdsl sweep --json`` (optionally with some keys replaced, for the smaller test versions), and pick
curves out of the JSON document it prints.

Only the command line and its JSON document are used (``mupdsl sweep --help``; ``mupdsl/sweep/results.py``), so
the runners measure what a user of the tool would get."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def load_toml(path: Path) -> dict[str, Any]:
    return tomllib.loads(Path(path).read_text())


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dump_toml(data: dict[str, Any]) -> str:
    """The experiment as TOML text: top-level keys, then the ``[measure]`` table (the only table the format has;
    an inline table such as a log grid stays inline)."""
    lines = [f"{k} = {_value(v)}" for k, v in data.items() if k != "measure"]
    if "measure" in data:
        lines += ["", "[measure]"] + [f"{k} = {_value(v)}" for k, v in data["measure"].items()]
    return "\n".join(lines) + "\n"


def experiment(path: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The experiment file's keys with ``overrides`` applied (a ``measure`` entry updates the table key by key)."""
    data = load_toml(path)
    for key, value in (overrides or {}).items():
        if key == "measure":
            data.setdefault("measure", {}).update(value)
        else:
            data[key] = value
    return data


def sweep(path: Path, out: Path, overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], float]:
    """Run ``mupdsl sweep`` on the experiment file (with ``overrides``: then on a copy written to
    ``out/experiment.toml``) into ``out`` with ``--fresh --json``; (the JSON document, wall seconds).

    Exit status 1 is a transfer FAIL of a claimed spec — a result, read like any other; anything else is an
    error."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    source = Path(path)
    if overrides:
        out.mkdir(parents=True, exist_ok=True)
        source = out.parent / f"{out.name}.toml"
        source.write_text(dump_toml(experiment(path, overrides)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mupdsl.cli", "sweep", str(source), "--out", str(out), "--fresh",
                           "--json"], capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    (out / "sweep.log").write_text(proc.stderr)
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        raise RuntimeError(f"mupdsl sweep {source} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout), seconds


def report(out: Path) -> dict[str, Any]:
    """The JSON document of a finished sweep in ``out`` (``mupdsl report OUT --json``): to redraw without re-running."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "mupdsl.cli", "report", str(out), "--json"], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"mupdsl report {out} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def trials(doc: dict[str, Any], spec: str) -> list[dict[str, Any]]:
    return doc["specs"][spec]["trials"]


def trial(doc: dict[str, Any], spec: str, width: int, lr: float, seed: int = 0) -> dict[str, Any] | None:
    for t in trials(doc, spec):
        if t["width"] == width and math.isclose(t["lr"], lr, rel_tol=1e-9) and t["seed"] == seed:
            return t
    return None


def curve(t: dict[str, Any], name: str) -> tuple[list[int], list[float | None]]:
    c = t["curves"].get(name, {"step": [], "value": []})
    return c["step"], c["value"]


def eta_stars(doc: dict[str, Any], spec: str) -> dict[int, float | None]:
    return {int(w): v for w, v in doc["specs"][spec]["eta_star"].items()}
