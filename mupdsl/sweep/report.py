"""``mupdsl report DIR``: a markdown report of a sweep — gates, η* per width, transfer verdicts, figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .analysis import transfer
from .plots import triptych
from .store import Store


def write_report(out_dir: str | Path) -> tuple[Path, dict]:
    out = Path(out_dir)
    if not (out / "index.sqlite").exists():
        raise FileNotFoundError(f"{out} holds no sweep (no index.sqlite)")
    store = Store(out)
    trials = store.trials()
    analysis = transfer(trials)
    exp = json.loads((out / "experiment.json").read_text()) if (out / "experiment.json").exists() else {}
    lines = [f"# Sweep report: {exp.get('name', out.name)}", ""]
    if exp:
        lines += [f"Model `{exp['model']}`, dataset `{exp['dataset']}`, optimizer `{exp['optimizer']}`, widths "
                  f"{exp['widths']}, {exp['steps']} steps, batch {exp['batch_size']}.", ""]
    lines += ["## Coordinate checks", "", "| spec | verdict | detail |", "|---|---|---|"]
    for spec, (verdict, detail) in sorted(store.gates().items()):
        lines.append(f"| {spec} | {verdict} | {detail or ''} |")
    counts = {s: sum(t["status"] == s for t in trials) for s in ("done", "diverged", "crashed")}
    lines += ["", f"## Trials: {len(trials)} ({counts['done']} done, {counts['diverged']} diverged, "
              f"{counts['crashed']} crashed)", "", "## Learning-rate transfer", "",
              "| spec | η* per width | shift (grid steps) | transfer |", "|---|---|---|---|"]
    for spec, a in sorted(analysis.items()):
        stars = ", ".join(f"{w}: {v:.3g}" if math.isfinite(v) else f"{w}: —" for w, v in sorted(a["eta_star"].items()))
        edge = "" if a["bracketed"] else " (η* at the grid's edge: widen the grid)"
        lines.append(f"| {spec} | {stars} | {a['shift']:.2f} | {a['transfer']}{edge} |")
    lines.append("")
    for spec, a in sorted(analysis.items()):
        figure = triptych(spec, [t for t in trials if t["spec"] == spec], store.curves, a, out / f"fig_{spec}.png")
        lines += [f"### {spec}", "", f"![{spec}]({figure.name})", ""]
    crashed = [t for t in trials if t["status"] == "crashed"]
    if crashed:
        lines += ["## Crashed trials", ""] + [f"- {t['id']} ({t['spec']}, width {t['width']}, lr {t['lr']:.3g}): "
                                              f"`{(t['error'] or '').splitlines()[0]}`" for t in crashed]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    store.close()
    return path, analysis
