"""The coordinate-check figure in mup's style: log-log, one panel per step, one line per entry, slopes in the
legend (step 0: activation RMS; steps ≥ 1: RMS of the change since init)."""

from __future__ import annotations

import os

import matplotlib
from matplotlib.figure import Figure
import numpy as np  # noqa: E402

from .taps import is_part  # noqa: E402

MAX_LINES = 12


def plot_coordcheck(result, path: str | os.PathLike) -> None:
    steps = result.steps
    fig = Figure(figsize=(3.4 * (steps + 1), 3.6))
    axes = fig.subplots(1, steps + 1, sharex=True, squeeze=False)
    slopes = {(s["key"], s["step"], s["quantity"]): s for s in result.slopes}
    failing = {(f["key"], f["step"]) for f in result.failures}
    palette = matplotlib.colormaps["tab20"]
    colors = {key: palette(i % 20) for i, key in enumerate(sorted({k for (k, _, _) in slopes}))}
    for step, ax in enumerate(axes[0]):
        quantity = "rms" if step == 0 else "delta_rms"
        keys = sorted({k for (k, st, q) in slopes if st == step and q == quantity and not is_part(k)},
                      key=lambda k: (-abs(slopes[(k, step, quantity)]["slope"]), k))[:MAX_LINES]
        for key in keys:
            xs, ys = [], []
            for w in result.widths:
                vals = [r[quantity] for r in result.records
                        if r["key"] == key and r["step"] == step and r["width"] == w and quantity in r]
                if vals:
                    xs.append(w)
                    ys.append(float(np.mean(vals)))
            s = slopes[(key, step, quantity)]["slope"]
            style = "-" if (key, step) not in failing else "--"
            ax.plot(xs, ys, style, marker="o", ms=3, color=colors[key], label=f"{key} ({s:+.2f})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"t = {step}: " + ("activation RMS" if step == 0 else "RMS of change since t=0"), fontsize=9)
        ax.grid(True, which="both", alpha=0.2)
        ax.set_xlabel("width")
        ax.legend(fontsize=5.5, loc="best")
    fig.suptitle(f"coordinate check: {result.spec} on {result.model}, {result.optimizer}, eta0={result.eta0:g} — "
                 f"{result.verdict} (dashed: failing; legend: slope of log RMS vs log width)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
