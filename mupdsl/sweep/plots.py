"""Figures of a sweep: the seed 002 Fig. 1 triptych per spec — sharpness vs step per width with the EoS line,
loss vs step, final loss vs learning rate per width (log₂ axis, η* marked)."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import matplotlib
import matplotlib.colors
import matplotlib.ticker
from matplotlib.figure import Figure
import numpy as np  # noqa: E402

from .analysis import measured_rate


def figure_slug(spec: str) -> str:
    """A file-name part for a spec: a preset's name as it is (``mup``); a spec given by path, its file's stem made
    safe (letters, digits, ``._-``) plus a short hash of the whole path, so two ``mup.param`` in different folders
    get different figures."""
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", spec) and not spec.endswith(".param"):
        return spec
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(spec).stem).strip("._") or "spec"
    return f"{stem[:48]}-{hashlib.sha1(spec.encode()).hexdigest()[:8]}"


def triptych(spec: str, trials: list[dict], curves_of, analysis: dict, path: Path, size: str = "width") -> Path:
    widths = sorted({t[size] for t in trials})
    colors = {w: matplotlib.colormaps["viridis"](i / max(len(widths) - 1, 1)) for i, w in enumerate(widths)}
    star = analysis["eta_star"]
    base = widths[0]
    lrs = sorted({t["lr"] for t in trials})
    shown_lr = min(lrs, key=lambda lr: abs(math.log(lr) - math.log(star[base]))) if _finite(star.get(base)) \
        else lrs[0]
    sharp_lr = measured_rate(trials, curves_of, shown_lr)
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    smoothed = False
    for w in widths:
        pick = [t for t in trials if t[size] == w and t["lr"] == shown_lr and t["status"] != "crashed"]
        if pick:
            c = curves_of(pick[0]["id"])
            if len(c.get("loss", [])):
                axes[1].plot(np.arange(len(c["loss"])), c["loss"], color=colors[w], lw=1, label=f"{size} {w}")
        pick = [t for t in trials if t[size] == w and t["lr"] == sharp_lr and t["status"] != "crashed"]
        if pick and sharp_lr is not None:
            smoothed = _sharpness_curve(axes[0], curves_of(pick[0]["id"]), colors[w], f"{size} {w}") or smoothed
        xs = sorted(analysis["losses"].get(w, {}))
        ys = [analysis["losses"][w][lr] for lr in xs]
        axes[2].plot(xs, [y if math.isfinite(y) else np.nan for y in ys], marker="o", ms=3, color=colors[w],
                     label=f"{size} {w}")
        if _finite(star.get(w)):
            axes[2].axvline(star[w], color=colors[w], ls=":", lw=1)
    if sharp_lr is None:
        axes[0].text(0.5, 0.5, "no sharpness measured\n(sharpness_every = 0, or no measured trial ran)", ha="center",
                     va="center",
                     transform=axes[0].transAxes, fontsize=8, color="gray")
    else:
        axes[0].set_yscale("log")
        how = f"; thick: running median of {MEDIAN_WINDOW}" if smoothed else ""
        axes[0].set_title(f"λmax(S H S) at lr {sharp_lr:.3g}\n(dashed: EoS{how})", fontsize=9)
    finite = [y for w in widths for y in analysis["losses"].get(w, {}).values() if math.isfinite(y)]
    if len(finite) > 3:   # one poor, not diverged, trial must not squash the curves around η*
        axes[2].set_ylim(top=min(max(finite), 3 * float(np.median(finite))) * 1.05)
    axes[0].set_xlabel("step")
    axes[1].set_title(f"train loss at lr {shown_lr:.3g}", fontsize=9)
    axes[1].set_xlabel("step")
    axes[2].set_xscale("log", base=2)
    shift = "—" if analysis["shift"] is None else f"{analysis['shift']:.2f}"
    axes[2].set_title(f"final loss vs lr — η* shift {shift} grid steps: {analysis['transfer']}, wider is better: "
                      f"{analysis['wider_is_better']}", fontsize=8)
    axes[2].set_xlabel("learning rate η0")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(True, alpha=0.2)
    fig.suptitle(spec, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


MEDIAN_WINDOW = 5
"""Measurements per running median in the sharpness panel: single mini-batch measurements of Adam's D P⁻¹ H
scatter 5–40× around a run's median (docs/sharpness.md), so a curve of ≥ this many points is drawn thin with its
running median on top."""


def running_median(values, window: int = MEDIAN_WINDOW) -> np.ndarray:
    """The median of each value and its ``window // 2`` neighbours on either side (fewer at the ends)."""
    v = np.asarray(values, dtype=float)
    half = window // 2
    return np.array([np.nanmedian(v[max(0, i - half): i + half + 1]) for i in range(len(v))])


def _sharpness_curve(ax, c: dict, color, label: str) -> bool:
    """One run's sharpness (with its running median when long enough) and the EoS line of the rate in force;
    True when a median was drawn."""
    steps, values = c.get("sharp_step", []), c.get("sharpness", [])
    if not len(values):
        return False
    long = len(values) >= MEDIAN_WINDOW
    ax.plot(steps, values, marker="o", ms=2 if long else 3, lw=0.6 if long else 1.5, alpha=0.35 if long else 1,
            color=color, label=None if long else label)
    if long:
        ax.plot(steps, running_median(values), color=color, lw=2.2, label=label)
    line = c.get("eos_line", [])
    if len(line) and len(set(np.round(line, 12))) > 1 and len(line) == len(steps):
        ax.plot(steps, line, ls="--", color=color, lw=1)   # the rate in force moves
    elif "eos" in c:
        ax.axhline(float(c["eos"][0]), ls="--", color="gray", lw=1)
    return long


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def consistency_figure(spec: str, fits: dict, path: Path, what: str = "sharpness") -> Path:
    fig = Figure(figsize=(4.8, 3.6))
    ax = fig.subplots()
    for width, f in sorted(fits.items()):
        line = ax.loglog(f["t"], np.where(f["g"] > 0, f["g"], np.nan), marker="o", ms=3,
                         label=f"width {width}" + (f": β = {f['beta']:.2f}" if f["beta"] is not None else ""))
        if f["beta"] is not None:
            ts = f["t"][f["t"] > 0]
            ax.loglog(ts, f["a"] * ts ** f["beta"], ls="--", lw=1, color=line[0].get_color())
    ax.set_title(f"{spec}: g(t) = |{what}_N(t) − {what}_widest(t)|, fit a·t^β", fontsize=9)
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def phase_figure(spec: str, portrait: dict, path: Path) -> Path:
    fig = Figure(figsize=(5.2, 4))
    ax = fig.subplots()
    loss = np.where(np.isfinite(portrait["loss"]), portrait["loss"], np.nan)
    positive = loss[np.isfinite(loss) & (loss > 0)]
    # a few exploding-but-finite runs must not wash out the valley: a log colour scale, capped at 10× the median
    norm = (matplotlib.colors.LogNorm(vmin=positive.min(), vmax=min(positive.max(), 10 * np.median(positive)))
            if positive.size else None)
    mesh = ax.pcolormesh(portrait["lrs"], portrait["gammas"], loss, shading="nearest", cmap="viridis", norm=norm)
    ax.plot(portrait["eta_star"], portrait["gammas"], "w*-", ms=8, label="η*")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("η0")
    ax.set_ylabel("γ")
    fits = [f"{label} {portrait[key]:.2f}" for key, label in (("slope_small", "γ ≤ 1:"), ("slope_large", "γ ≥ 1:"))
            if portrait.get(key) is not None]
    slope = portrait["slope"]
    title = ", ".join(fits) if fits else (f"all γ: {slope:.2f}" if slope is not None else "")
    ax.set_title(f"{spec}: final loss over (γ, η)" + (f"; slope of log η*: {title}" if title else ""), fontsize=9)
    fig.colorbar(mesh, ax=ax, label="final train loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def width_consistency_figure(found: dict[str, dict], path: Path, size: str = "width") -> Path:
    """Seed 004's consistency: per metric (loss curves, logits, feature kernel) the distance of each narrower size
    to the widest network, per spec, on log-log axes."""
    metrics = (("loss", "loss curves: mean |L_N − L_widest|"), ("logits", "logits: ‖f_N − f_widest‖ / ‖f_widest‖"),
               ("kernel", "feature kernel: ‖K̂_N − K̂_widest‖"))
    fig = Figure(figsize=(12, 3.4))
    axes = fig.subplots(1, 3)
    sizes = sorted({n for c in found.values() for n in c["distance"]})
    for ax, (metric, title) in zip(axes, metrics):
        for spec, c in sorted(found.items()):
            points = [(n, d[metric]) for n, d in sorted(c["distance"].items()) if d[metric] is not None]
            if points:
                slope = c["slope"][metric]
                ax.loglog([p[0] for p in points], [p[1] for p in points], marker="o", ms=4,
                          label=f"{spec}" + ("" if slope is None else f" (slope {slope:+.2f})"))
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(size)
        ax.grid(True, alpha=0.2, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("distance to the widest network at a fixed learning rate (seed 004)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
