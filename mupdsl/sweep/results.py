"""A sweep's results as one JSON document (``mupdsl sweep --json``, ``mupdsl report DIR --json``): per spec and
size η* with the verdicts and their reasons, and per trial its final loss and measured curves with their steps —
what a script needs to compare a run against references without reading the store.

Only the trials of the experiment as it is now are shown (:func:`current_trials`): ``stale`` counts the others
the store holds (run before a spec, the model or a setting changed), ``unreadable`` names the trials whose curve
file is missing or garbled (a resumed sweep trains them again).

Non-finite numbers (a diverged trial's loss, a size without η*) are ``null``: the document is strict JSON.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..spec import SpecError
from .analysis import BETTER, phase, sharpness_curves, sharpness_spread, transfer
from .consistency import consistency_rates, width_consistency
from .experiment import Experiment
from .keys import gate_keys, inputs_found, plan_trials
from .store import Store
from .workdir import read_record

MEASURED = ("sharpness", "hvps", "trace", "trace_stderr", "directional", "ntk", "floor_share", "eos_line")
"""Curves measured at the steps of ``sharp_step``."""


def plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays made Python, dict keys made strings, and NaN / ±inf made None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def curve_table(curves: dict[str, np.ndarray]) -> dict[str, dict[str, list]]:
    """Each stored curve with its steps: ``{name: {"step": [...], "value": [...]}}``. The training loss is per
    step from 0, ``eval_loss`` at ``eval_step``, the measurements (sharpness, HVPs, trace, ε-floor share, the EoS
    line of the rate in force, …) at ``sharp_step``; the EoS threshold at the peak rate is left to the caller."""
    table = {}
    for name, values in curves.items():
        if name.endswith("_step") or name == "eos" or name.startswith("probe_"):
            continue   # probe logits and kernels are arrays per evaluation: in the store; their distances in "consistency"
        values = np.asarray(values).ravel()
        if name == "eval_loss" and "eval_step" in curves:
            steps = curves["eval_step"]
        elif name in MEASURED and "sharp_step" in curves and len(curves["sharp_step"]) == len(values):
            steps = curves["sharp_step"]
        else:
            steps = np.arange(len(values))
        table[name] = {"step": [int(s) for s in np.asarray(steps).ravel()], "value": plain(values)}
    return table


def trial_entry(trial: dict[str, Any], curves: dict[str, np.ndarray]) -> dict[str, Any]:
    """One trial: its coordinates, status, final train and eval loss, error (crashed), EoS threshold, curves."""
    keys = ("id", "width", "depth", "lr", "seed", "gamma", "status", "final_loss", "final_eval", "error", "seconds")
    entry = {k: trial.get(k) for k in keys}
    eos = curves.get("eos")
    entry["eos_threshold"] = float(np.asarray(eos).ravel()[0]) if eos is not None and np.size(eos) else None
    entry["curves"] = curve_table(curves)
    return plain(entry)


def spec_entry(a: dict[str, Any]) -> dict[str, Any]:
    """A spec's transfer analysis (:func:`.analysis.transfer`) as plain data, one record per size."""
    sizes = {w: {"eta_star": a["eta_star"][w], "bracketed": a["inside"][w], "best_lr": a["best_lr"][w],
                 "best_loss": a["best_loss"][w], "reason": a["failed"].get(w), **a["counts"][w]}
             for w in sorted(a["eta_star"])}
    keys = ("shift", "shift_spread", "grid_step", "transfer", "transfer_reason", "wider_is_better",
            "wider_is_better_reason")
    return plain({"eta_star": a["eta_star"], "sizes": sizes, **{k: a[k] for k in keys}})


def outcome_note(trials: list[dict[str, Any]]) -> str | None:
    """A sentence when no trial of the sweep converged ("every trial diverged", …); None otherwise."""
    if not trials or any(t["status"] == "done" for t in trials):
        return None
    diverged = sum(t["status"] == "diverged" for t in trials)
    if diverged == len(trials):
        return f"every trial diverged ({len(trials)})"
    if diverged == 0:
        return f"every trial crashed ({len(trials)})"
    return f"no trial converged ({diverged} diverged, {len(trials) - diverged} crashed)"


def current_trials(store: Store, record: dict[str, Any] | None) -> tuple[list[dict[str, Any]], int, set[str] | None]:
    """(the trials of the experiment as it is now, how many other trials the store holds, the gate keys of the
    experiment). "Now" is the recorded experiment with its spec and model files as they are, where they can be
    read from here; else the experiment as last run (its ids kept in the store); else every trial (a store
    written without an experiment). Gate keys are None when unknown."""
    trials = store.trials()
    ids = gates = None
    if record is not None:
        try:
            exp = Experiment.model_validate(record)
            if inputs_found(exp):
                ids, gates = {t["id"] for t in plan_trials(exp)}, set(gate_keys(exp).values())
        except (ValueError, OSError, SpecError):
            pass   # an experiment that no longer loads from here: fall back on the one last run
    if ids is None:
        ids, gates = store.current() or (None, None)
    if ids is None:
        return trials, 0, None
    kept = [t for t in trials if t["id"] in ids]
    return kept, len(trials) - len(kept), gates


def stale_note(stale: int) -> str | None:
    if not stale:
        return None
    return (f"{stale} stale trial{'s' if stale != 1 else ''} left aside: run before a spec, the model or a setting of "
            "the experiment changed (`mupdsl sweep --fresh` deletes them)")


def sweep_document(out_dir: str | Path, analysis: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The results in ``out_dir`` as one JSON-ready document: counts, ``note`` (when no trial converged), and
    per spec whether it claims transfer (not listed under ``ungated``), its coordinate-check gate, η* per size,
    the verdicts with their reasons (a γ sweep: the phase portrait's slopes instead) and its trials."""
    out = Path(out_dir)
    record = read_record(out)
    exp = record or {}
    size = "depth" if len(exp.get("depths", [])) > 1 and len(exp.get("widths", [])) == 1 else "width"
    store = Store(out)
    try:
        trials, stale, keys = current_trials(store, record)
        unreadable = store.broken_curves(trials)
        analysis = transfer(trials, size) if analysis is None else analysis
        portraits = phase(trials)
        gates = store.gates(keys)

        def curves_of(trial_id: str) -> dict:
            return {} if trial_id in unreadable else _curves(store, trial_id)

        rates = consistency_rates(trials, analysis, size)
        consistent = width_consistency(trials, curves_of, rates, size)
        sharp = {spec: (lr, sharpness_spread(curves)) for spec, (lr, curves) in
                 sharpness_curves(trials, curves_of, rates, size).items()}
        specs: dict[str, Any] = {}
        for spec in sorted({t["spec"] for t in trials} | set(exp.get("specs", []))):
            rows = sorted((t for t in trials if t["spec"] == spec),
                          key=lambda t: (t["width"], t["depth"] or 0, t["gamma"] or 0.0, t["lr"], t["seed"]))
            entry: dict[str, Any] = {"claimed": spec not in exp.get("ungated", []),
                                     "gate": dict(zip(("verdict", "detail"), gates[spec])) if spec in gates else None}
            if spec in analysis:
                entry.update(spec_entry(analysis[spec]))
            if spec in portraits:
                p = portraits[spec]
                keys = ("size", "other_sizes", "gammas", "lrs", "eta_star", "bracketed", "unbracketed", "slope",
                        "slope_small", "slope_large")
                entry["phase"] = plain({k: p[k] for k in keys} | {"loss": p["loss"]})
            if spec in consistent:
                entry["consistency"] = plain(consistent[spec])
            if sharp.get(spec, (None, None))[1] is not None:
                lr, spread = sharp[spec]
                entry["sharpness_spread"] = plain({"lr": lr, **spread})
            entry["trials"] = [trial_entry(t, curves_of(t["id"])) for t in rows]
            specs[spec] = entry
    finally:
        store.close()
    counts = {s: sum(t["status"] == s for t in trials) for s in ("done", "diverged", "crashed")}
    return {"name": exp.get("name", out.name), "size": size, "trials": len(trials), **counts,
            "stale": stale, "unreadable": unreadable, "note": outcome_note(trials), "specs": specs}


def failed_claims(doc: dict[str, Any]) -> list[str]:
    """The specs that claim transfer (not ungated) and whose transfer verdict is FAIL: `mupdsl sweep` exits 1
    when there is one (design.md §6); UNDECIDED and unclaimed FAILs leave the exit code 0."""
    return [s for s, e in doc["specs"].items() if e.get("claimed") and e.get("transfer") == "FAIL"]


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """The document in a few lines of text: per spec η* per size (— and why where none), the shift and both
    verdicts with their reasons; for a γ sweep the slopes; the note when no trial converged; the report's path."""
    lines = [f"{doc['note']}: no learning rate converged; no η* at any {doc['size']}"] if doc.get("note") else []
    for spec, a in doc["specs"].items():
        if "transfer" in a:
            stars = ", ".join(f"{w}: {s['eta_star']:.3g}" if s["eta_star"] is not None else f"{w}: — ({s['reason']})"
                              for w, s in a["sizes"].items())
            shift = "—" if a["shift"] is None else f"{a['shift']:.2f}"
            lines += [f"{spec}: η* {stars}; shift {shift} grid steps",
                      f"  transfer {a['transfer']}: {a['transfer_reason']}",
                      f"  {BETTER[doc['size']]} {a['wider_is_better']}: {a['wider_is_better_reason']}"]
        elif "phase" in a:
            p = a["phase"]
            slopes = ", ".join(f"{label} {'—' if p[k] is None else format(p[k], '.2f')}" for k, label in
                               (("slope", "all γ"), ("slope_small", "γ ≤ 1"), ("slope_large", "γ ≥ 1")))
            lines.append(f"{spec}: slope of log η* against log γ: {slopes} (a γ sweep: no transfer verdict)")
    if doc.get("stale"):
        lines.append(stale_note(doc["stale"]))
    if doc.get("unreadable"):
        lines.append(f"{len(doc['unreadable'])} trial(s) have a missing or unreadable curve file (see the report); "
                     "re-run the sweep to train them again")
    if doc.get("report"):
        lines.append(f"report: {doc['report']}")
    return lines


def _curves(store: Store, trial_id: str) -> dict[str, np.ndarray]:
    try:
        return store.curves(trial_id)
    except (FileNotFoundError, OSError, ValueError):
        return {}
