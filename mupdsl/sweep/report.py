"""``mupdsl report DIR``: a markdown report of a sweep — gates, η* per size, the transfer and "wider is better"
verdicts with their reasons (:mod:`.analysis`), sizes without η* and why, figures. Only the trials of the
experiment as it is now are analysed; the stale ones are counted, and trials whose curve file is missing or
garbled are listed (a resumed sweep trains them again). Figures are named by a file-safe slug of the spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .analysis import BETTER, MIN_SIZES, consistency, phase, sharpness_curves, sharpness_spread, transfer
from .consistency import consistency_rates, width_consistency
from .plots import consistency_figure, figure_slug, phase_figure, triptych, width_consistency_figure
from .results import current_trials, outcome_note, stale_note
from .store import Store
from .workdir import read_record


def write_report(out_dir: str | Path) -> tuple[Path, dict]:
    out = Path(out_dir)
    if not (out / "index.sqlite").exists():
        raise FileNotFoundError(f"{out} holds no sweep (no index.sqlite)")
    record = read_record(out)
    exp = record or {}
    store = Store(out)
    try:
        path, analysis = _write(out, store, record, exp)
    finally:
        store.close()
    return path, analysis


def _write(out: Path, store: Store, record, exp: dict) -> tuple[Path, dict]:
    trials, stale, keys = current_trials(store, record)
    unreadable = store.broken_curves(trials)

    def curves_of(trial_id: str) -> dict:
        return {} if trial_id in unreadable else store.curves(trial_id)

    size = "depth" if len(exp.get("depths", [])) > 1 and len(exp.get("widths", [])) == 1 else "width"
    analysis = transfer(trials, size)
    lines = [f"# Sweep report: {exp.get('name', out.name)}", ""]
    if exp:
        lines += [f"Model `{exp['model']}`, dataset `{exp['dataset']}`, optimizer `{exp['optimizer']}`, widths "
                  f"{exp['widths']}, {exp['steps']} steps, batch {exp['batch_size']}.", ""]
    lines += ["## Coordinate checks", "", "| spec | verdict | detail |", "|---|---|---|"]
    for spec, (verdict, detail) in sorted(store.gates(keys).items()):
        lines.append(f"| {spec} | {verdict} | {detail or ''} |")
    counts = {s: sum(t["status"] == s for t in trials) for s in ("done", "diverged", "crashed")}
    lines += ["", f"## Trials: {len(trials)} ({counts['done']} done, {counts['diverged']} diverged, "
              f"{counts['crashed']} crashed)", ""]
    if stale:
        lines += [f"{stale_note(stale)}.", ""]
    if unreadable:
        lines += [f"**{len(unreadable)} trial(s) without their curves** (their losses are in the index; re-run the "
                  "sweep to train them again):", ""] + [f"- {i}: {problem}" for i, problem in unreadable.items()] + [""]
    note = outcome_note(trials)
    if note:
        lines += [f"**No result: {note}.** No learning rate of the grid converged at any {size}: lower the grid "
                  "or check the model.", ""]
    lines += transfer_section(analysis, size)
    for spec, a in sorted(analysis.items()):
        figure = triptych(spec, [t for t in trials if t["spec"] == spec], curves_of, a,
                          _output(store, out, f"fig_{figure_slug(spec)}.png"), size)
        lines += [f"### {spec}", "", f"![{spec}]({figure.name})", ""]
    lines += _consistency_section(trials, analysis, store, out, size, curves_of)
    portraits = phase(trials)
    for spec, p in portraits.items():
        figure = phase_figure(spec, p, _output(store, out, f"phase_{figure_slug(spec)}.png"))
        slopes = ", ".join(f"{label} {'—' if p[key] is None else format(p[key], '.2f')}" for key, label in
                           (("slope", "all γ"), ("slope_small", "γ ≤ 1"), ("slope_large", "γ ≥ 1")))
        edge = (f" η* at the grid's edge (a bound, left out of the fits) at γ = "
                f"{', '.join(f'{g:g}' for g in p['unbracketed'])}." if p["unbracketed"] else "")
        lines += [f"## γ–η phase portrait: {spec}", "", f"Slope of log η* against log γ: {slopes} (a γ sweep: "
                  f"slopes, no transfer verdict).{edge}", "", f"![phase {spec}]({figure.name})", ""]
    crashed = [t for t in trials if t["status"] == "crashed"]
    if crashed:
        lines += ["## Crashed trials", ""] + [f"- {t['id']} ({t['spec']}, width {t['width']}, lr {t['lr']:.3g}): "
                                              f"`{(t['error'] or '').splitlines()[0]}`" for t in crashed]
    path = _output(store, out, "report.md")
    path.write_text("\n".join(lines) + "\n")
    return path, analysis


def _number(value: float | None, spec: str) -> str:
    return "—" if value is None or not np.isfinite(value) else format(value, spec)


def _output(store: Store, out: Path, name: str) -> Path:
    """``out/name``, recorded in the store before it is written (``--fresh`` deletes what is recorded)."""
    store.record_output(name)
    return out / name


def transfer_section(analysis: dict[str, dict], size: str = "width") -> list[str]:
    """The transfer table: η* per size (a size without one shows — and why), the shift, and both verdicts with
    their reasons."""
    lines = ["## Learning-rate transfer", ""]
    if not analysis:
        return lines + ["No transfer analysis: every trial of this sweep sets γ (see the phase portrait).", ""]
    lines += [f"Transfer needs at least {MIN_SIZES} {size}s, each with η* inside the grid; PASS when η* moves at "
              "most one grid step, UNDECIDED when resampling the seeds puts the shift on both sides of one step. "
              f"{BETTER[size].capitalize()}: the best loss does not grow with {size} beyond noise.", "",
              f"| spec | η* per {size} | shift (grid steps) | transfer | {BETTER[size]} |", "|---|---|---|---|---|"]
    for spec, a in sorted(analysis.items()):
        stars = ", ".join(f"{w}: {v:.3g}" + ("" if a["inside"][w] else " (edge)") if v is not None
                          else f"{w}: — ({a['failed'].get(w, 'no η*')})" for w, v in sorted(a["eta_star"].items()))
        shift = "—" if a["shift"] is None else f"{a['shift']:.2f}"
        if a.get("shift_spread"):
            shift += " ({:.2f}–{:.2f} over seeds)".format(*a["shift_spread"])
        lines.append(f"| {spec} | {stars} | {shift} | {a['transfer']}: {a['transfer_reason']} | "
                     f"{a['wider_is_better']}: {a['wider_is_better_reason']} |")
    return lines + [""]


def _consistency_section(trials, analysis, store, out: Path, size: str = "width", curves_of=None) -> list[str]:
    """Seed 002 Fig. 3: the sharpness curves' distance to the widest one, with fits; seed 004: the loss curves',
    logits' and feature kernels' distances to the widest network and the ensembles — at the rate nearest the
    narrowest size's η*."""
    lines = []
    curves_of = curves_of or store.curves
    rates = consistency_rates(trials, analysis, size)
    for spec, (lr, curves) in sharpness_curves(trials, curves_of, rates, size).items():
        spread = sharpness_spread(curves)
        if spread is None:
            continue
        medians = ", ".join(f"{w}: {_number(m, '.4g')}" for w, m in spread["median"].items())
        lines += [f"## Consistency of the sharpness across {size}s: {spec} (lr {lr:.3g})", "",
                  f"Median of each run's measurements — {medians}; widest / narrowest: "
                  f"{_number(spread['ratio'], '.2f')} (≈ 1: the curves lie together).", ""]
        fits = consistency(curves)
        if fits:
            figure = consistency_figure(spec, fits, _output(store, out, f"consistency_{figure_slug(spec)}.png"))
            table = ", ".join(f"{w}: β = {f['beta']:.2f}" if f["beta"] is not None else f"{w}: —"
                              for w, f in sorted(fits.items()))
            lines += [f"g(t) = |λ_N(t) − λ_widest(t)| fitted by a·t^β — {table}", "",
                      f"![consistency]({figure.name})", ""]
    found = width_consistency(trials, curves_of, rates, size)
    if found:
        figure = width_consistency_figure(found, _output(store, out, "consistency_widths.png"), size)
        lines += [f"![consistency across {size}s]({figure.name})", ""]
    return lines + _width_consistency_lines(found, size)


def _width_consistency_lines(found: dict[str, dict], size: str) -> list[str]:
    lines = []
    for spec, c in sorted(found.items()):
        def cell(value):
            return "—" if value is None else f"{value:.3g}"
        lines += [f"## Consistency across {size}s (seed 004): {spec} (lr {c['lr']:.3g}, widest {c['widest']})", "",
                  f"| {size} | loss curves: mean abs. distance | logits: relative distance | feature kernel: "
                  "distance |", "|---|---|---|---|"]
        lines += [f"| {n} | {cell(d['loss'])} | {cell(d['logits'])} | {cell(d['kernel'])} |"
                  for n, d in sorted(c["distance"].items())]
        shrink = ", ".join(f"{m}: {'—' if s is None else format(s, '+.2f')}" for m, s in c["slope"].items())
        lines += ["", f"Log-log slope of the distance against {size} (negative: shrinks with {size}): {shrink}.", ""]
        e = c["ensemble"]
        if e:
            rows = ", ".join(f"{n}: single {v['single']:.4f}, ensemble of {v['members']} {v['ensemble']:.4f}"
                             for n, v in sorted(e["by_size"].items()))
            lines += [f"Probe loss per {size} — {rows}. Bias of narrower width (the narrowest ensemble worse than "
                      f"one widest network): {'yes' if e['bias_of_narrower_width'] else 'no'}.", ""]
    return lines
