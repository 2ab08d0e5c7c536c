"""Reproduce Adam at the edge of stability — claim S4 of docs/reproductions.md (seed 002 App. J.1, after Cohen et
al. 2022, "Adaptive gradient methods at the edge of stability"): under full-batch Adam, λmax(D P⁻¹ H) rises to
2(1 + β1)/((1 − β1) η0) = 38/η0 (β1 = 0.9) and hovers there, at every width.

``runners/repro_s4.toml`` (µP MLP on 4,000 MNIST-1D examples, widths 64–512, η0 = 0.002 and 0.003, 200 steps) is
run by ``mupdsl sweep --json``; the measurement is on the whole training set with the preconditioner of the update
the full-batch gradient makes (``preconditioner = "next"``). Reported per width and η0: the ratio
λmax(D P⁻¹ H) / (38/η0) over the second half of training (steps ≥ ``LATE``: mean, min, max), the first step at
which it passed 0.8, and the largest share of the top eigenvector on Adam's ε floor (a measurement with more than
``FLOOR`` there is left out of the late statistics and counted, with the mean including it beside). Written to
``OUT/results.json``; the figure (sharpness against step with the EoS line, per η0, and the loss) to
``OUT/repro_s4.png``.

    python runners/repro_s4.py --out out/s4 [--small] [--figure docs/figures/repro_s4.png] [--redraw]
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from repro_common import ROOT, curve, report, runner_parser, sweep, trials  # noqa: E402

EXPERIMENT = ROOT / "runners" / "repro_s4.toml"
SPEC = "mup"
LATE = 100
"""The late part of training: steps from here to the end (200) — the second half."""
REACHED = 0.8
"""A trial has reached the threshold at the first measurement with λmax ≥ 0.8 · 38/η0."""
FLOOR = 0.25
"""A measurement whose top eigenvector lies more than this share on coordinates at Adam's ε floor (the sweep's
``floor_warn`` default, docs/sharpness.md) measures ε's directions, not the trained landscape: it is left out of the
late-window statistics and counted in ``floor_points``."""
SMALL = {"widths": [64, 128, 256]}
"""The slow test's size: the three narrower widths."""


def summarize(doc: dict) -> dict:
    per = {}
    for t in trials(doc, SPEC):
        steps, values = curve(t, "sharpness")
        eos = t["eos_threshold"]
        ratio = [v / eos if v is not None else np.nan for v in values]
        # one floor share per Adam measurement, at the sharpness's steps
        _, floor = curve(t, "floor_share")
        if len(floor) != len(ratio):
            raise ValueError(f"width {t['width']} lr {t['lr']}: {len(floor)} floor shares for {len(ratio)} "
                             "measurements")
        late = [(r, f) for s, r, f in zip(steps, ratio, floor) if s >= LATE]
        kept = [r for r, f in late if f <= FLOOR]
        reached = next((s for s, r in zip(steps, ratio) if r >= REACHED), None)
        _, loss = curve(t, "loss")
        per.setdefault(t["lr"], {})[t["width"]] = {
            "status": t["status"], "eos": eos, "late_mean": float(np.mean(kept)), "late_min": float(np.min(kept)),
            "late_max": float(np.max(kept)), "late_points": len(kept), "floor_points": len(late) - len(kept),
            "late_mean_all": float(np.mean([r for r, _ in late])), "reached_step": reached,
            "first_step": steps[0], "first_ratio": ratio[0],
            "floor_share_max": max(floor) if floor else None, "final_loss": t["final_loss"],
            "loss_at_late_start": loss[LATE] if len(loss) > LATE else None,
            "steps": steps, "ratio": ratio, "floor": floor}
    return per


def figure(doc: dict, per: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = sorted(per)
    widths = sorted({w for p in per.values() for w in p})
    cmap = plt.get_cmap("viridis")
    color = {w: cmap(i / max(len(widths) - 1, 1)) for i, w in enumerate(widths)}
    fig, axes = plt.subplots(1, len(lrs) + 1, figsize=(5.2 * (len(lrs) + 1), 3.8), squeeze=False)
    axes = axes[0]
    for ax, lr in zip(axes, lrs):
        eos = next(iter(per[lr].values()))["eos"]
        for w in widths:
            p = per[lr].get(w)
            if p is None:
                continue
            values = np.asarray(p["ratio"]) * eos
            ax.plot(p["steps"], np.minimum(values, eos * 1.4), marker="o", ms=3, color=color[w],
                    label=f"N={w}: late mean {p['late_mean']:.2f}×")
            for s_, v, f in zip(p["steps"], values, p["floor"]):
                if f > FLOOR:   # an ε-floor measurement (left out of the statistics); clipped to the axes
                    ax.plot([s_], [min(v, eos * 1.4)], "x", ms=9, mew=2, color="red")
                    ax.annotate(f"{v / eos:.2f}×, {100 * f:.0f} % on the ε floor", (s_, min(v, eos * 1.4)),
                                xytext=(-150, -4), textcoords="offset points", fontsize=7, color="red")
        ax.axhline(eos, ls="--", color="black", lw=1)
        ax.text(max(per[lr][widths[0]]["steps"]) * 0.02 + 20, eos * 1.03, f"38/η0 = {eos:,.0f}", fontsize=8)
        ax.axvspan(LATE, max(per[lr][widths[0]]["steps"]) + 5, color="gray", alpha=0.12, lw=0)
        ax.set_ylim(0, eos * 1.45)
        ax.set_ylabel("λmax(D P⁻¹ H)")
        ax.set_xlabel("step")
        ax.set_title(f"full-batch Adam, µP, η0 = {lr:g}: λmax(D P⁻¹ H) (shaded: late window)", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    ax = axes[-1]
    for t in trials(doc, SPEC):
        _, loss = curve(t, "loss")
        ax.semilogy(loss, color=color[t["width"]], ls="-" if t["lr"] == lrs[0] else "--", lw=1,
                    label=f"N={t['width']}, η0={t['lr']:g}")
    ax.set_xlabel("step")
    ax.set_title("training loss (full batch)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(out: Path, small: bool = False, redraw: bool = False) -> dict:
    """Run the sweep into ``out`` (or, with ``redraw``, read the one already there) and check the claim."""
    out = Path(out)
    start = time.perf_counter()
    if redraw:
        doc, seconds = report(out / "sweep"), float("nan")
    else:
        doc, seconds = sweep(EXPERIMENT, out / "sweep", SMALL if small else None)
    per = summarize(doc)
    figure(doc, per, out / "repro_s4.png")
    curves = ("steps", "ratio", "floor")
    summary = {"per_lr": {lr: {w: {k: v for k, v in p.items() if k not in curves} for w, p in ws.items()}
                          for lr, ws in per.items()},
               "seconds": {"sweep": seconds, "total": time.perf_counter() - start}}
    if redraw and (out / "results.json").exists():   # keep the wall times of the run that made the sweep
        summary["seconds"] = json.loads((out / "results.json").read_text())["summary"]["seconds"]
    (out / "results.json").write_text(json.dumps({"summary": summary, "curves": per}, default=str))
    return summary


def main() -> None:
    args = runner_parser(__doc__.split("\n\n")[0], "out/s4", "widths 64–256").parse_args()
    s = run(Path(args.out), args.small, args.redraw)
    for lr, ws in s["per_lr"].items():
        for w, p in ws.items():
            print(f"η0 {lr:g} (38/η0 = {p['eos']:,.0f}) width {w}: late ratio mean {p['late_mean']:.3f} "
                  f"[{p['late_min']:.2f}, {p['late_max']:.2f}] over {p['late_points']} points ({p['floor_points']} on "
                  f"the ε floor left out; with them {p['late_mean_all']:.3f}); reached 0.8 at step "
                  f"{p['reached_step']}; floor share ≤ {p['floor_share_max']:.1e}; loss {p['final_loss']:.3f}")
    print(f"wall: {s['seconds']['total']:.0f} s")
    if args.figure:
        shutil.copyfile(Path(args.out) / "repro_s4.png", args.figure)


if __name__ == "__main__":
    main()
