"""Shared by the reproduction runners (``runners/repro_s2.py``, ``runners/repro_s4.py``): run an experiment file
through the sweep (optionally with some top-level keys replaced, for the smaller test versions) and pick curves out
of its results document — the one ``mupdsl sweep --json`` prints (``mupdsl/sweep/results.py``), so the runners
measure what a user of the tool gets; and their common command line."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mupdsl.sweep import load_experiment, run, sweep_document, write_report  # noqa: E402


def sweep(path: Path, out: Path, overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], float]:
    """Run the experiment file (top-level keys replaced by ``overrides``) into ``out`` afresh, write its report as
    ``mupdsl sweep`` does, and return (the results document, wall seconds). Progress goes to stderr."""
    exp = load_experiment(path, overrides)
    start = time.perf_counter()
    run(exp, out, fresh=True, say=lambda line: print(line, file=sys.stderr, flush=True))
    _, analysis = write_report(out)
    return sweep_document(out, analysis), time.perf_counter() - start


def report(out: Path) -> dict[str, Any]:
    """The results document of a finished sweep in ``out`` (as ``mupdsl report OUT --json``): to redraw without
    re-running."""
    return sweep_document(out)


def runner_parser(description: str, out: str, small: str) -> argparse.ArgumentParser:
    """The runners' command line: ``--out``, ``--small`` (the slow test's size), ``--redraw``, ``--figure``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default=out)
    parser.add_argument("--small", action="store_true", help=f"the slow test's size ({small})")
    parser.add_argument("--redraw", action="store_true", help="read the sweeps already in --out instead of running")
    parser.add_argument("--figure", default=None, help="also copy the figure here (e.g. docs/figures/<name>.png)")
    return parser


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
