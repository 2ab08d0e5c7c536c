"""Reproduce seed 002 Fig. 1 (and the g(t) fits of Fig. 3 a) in miniature — claim S2 of docs/reproductions.md: the
reference MLP on MNIST-1D, SGD, widths 64–1024, µP in the paper's own form (`mean_field`: γ = √N, η = η0 γ²)
against NTP (γ = 1), the contrast of Fig. 1; SP beside them for η* (``--sp``).

Experiment files, each run by ``mupdsl sweep --json``:

* ``runners/repro_s2_transfer.toml`` — a factor-2 grid of η0 per width, µP and NTP: η* per width and its shift;
* ``runners/repro_s2_sharpness_mup.toml``, ``runners/repro_s2_sharpness_ntp.toml`` — λmax(γ²H) every 20 steps at
  two η0 each, the same training;
* ``runners/repro_s2_sp.toml`` (with ``--sp``) — SP's η* per width.

Claims checked, with the numbers written to ``OUT/results.json`` and the figure to ``OUT/repro_s2.png`` (the
layout of Fig. 1: sharpness with the EoS lines, loss, final loss against η0 per width; and Fig. 3 a's g(t)):

1. µP's η* moves at most one grid step (a factor of 2) from width 64 to 1024; NTP's (Fig. 1's contrast) and SP's
   move two or more.
2. After warm-up (steps ≥ ``WARMUP``) µP's sharpness agrees across widths within 10 % (late-window means), near
   2/η0; NTP's curves separate (narrow networks sharpen, wide ones stay near the initial sharpness).
3. g(t) = |λ_N(t) − λ_widest(t)| fitted by a·t^β (the sweep analysis' power law) for every narrower width.

    python runners/repro_s2.py --out out/s2 [--sp] [--small] [--figure docs/figures/repro_s2.png] [--redraw]
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from repro_common import ROOT, curve, eta_stars, report, runner_parser, sweep, trial, trials  # noqa: E402

from mupdsl.sweep.analysis import consistency  # noqa: E402

TRANSFER = ROOT / "runners" / "repro_s2_transfer.toml"
SHARPNESS = {"mean_field": ROOT / "runners" / "repro_s2_sharpness_mup.toml",
             "ntp": ROOT / "runners" / "repro_s2_sharpness_ntp.toml"}
SP_FILE = ROOT / "runners" / "repro_s2_sp.toml"
MUP, NTP, SP = "mean_field", "ntp", "sp_kaiming"
WARMUP = 100
"""Steps before the sharpness is compared: µP reaches 2/η0 by step 40–60 at every width and rate measured here."""
SMOOTH = 20
"""Training-loss curves are averaged over this many steps (mini-batch noise) before their g(t) is taken."""
SMALL = {   # the slow test's size: three widths; the sharpness at one rate per spec (µP's η*; NTP's sharpening)
    "transfer": {"widths": [64, 256, 1024]},
    MUP: {"widths": [64, 256, 1024], "lrs": [0.5]},
    NTP: {"widths": [64, 256, 1024], "lrs": [2.0]},
    "sp": {"widths": [64, 256, 1024]},
}


def shift_steps(stars: dict[int, float | None], grid_step: float, lo: int, hi: int) -> float | None:
    """log(η*_hi / η*_lo) in grid steps (positive: η* grows with width)."""
    a, b = stars.get(lo), stars.get(hi)
    if not (a and b):
        return None
    return math.log(b / a) / grid_step


def transfer_summary(doc: dict) -> dict:
    out = {}
    for spec, entry in doc["specs"].items():
        stars = eta_stars(doc, spec)
        widths = sorted(stars)
        out[spec] = {
            "eta_star": stars, "grid_step": entry["grid_step"],
            "bracketed": {int(w): s["bracketed"] for w, s in entry["sizes"].items()},
            "best_loss": {int(w): s["best_loss"] for w, s in entry["sizes"].items()},
            "shift_narrow_to_wide": shift_steps(stars, entry["grid_step"], widths[0], widths[-1]),
            "shift_all": entry["shift"], "transfer": entry["transfer"],
            "losses": {w: {t["lr"]: t["final_loss"] for t in trials(doc, spec) if t["width"] == w} for w in widths},
        }
    return out


def smoothed_loss(t: dict, at: list[int]) -> list[float]:
    """The training loss averaged over the ``SMOOTH`` steps up to each step of ``at``."""
    _, loss = curve(t, "loss")
    loss = np.asarray([np.nan if v is None else v for v in loss], dtype=float)
    return [float(np.mean(loss[max(0, s - SMOOTH):s])) if s > 0 and s <= len(loss) else math.nan for s in at]


def sharpness_summary(doc: dict) -> dict:
    out = {}
    for spec in doc["specs"]:
        rows = [t for t in trials(doc, spec) if t["status"] == "done"]
        widths, lrs = sorted({t["width"] for t in rows}), sorted({t["lr"] for t in rows})
        per_lr = {}
        for lr in lrs:
            means, curves, losses = {}, {}, {}
            for w in widths:
                t = trial(doc, spec, w, lr)
                if t is None or t["status"] != "done":
                    continue
                steps, values = curve(t, "sharpness")
                late = [v for s, v in zip(steps, values) if s >= WARMUP and v is not None]
                means[w] = float(np.mean(late)) if late else None
                curves[w] = (np.asarray(steps, dtype=float), np.asarray(values, dtype=float))
                losses[w] = (np.asarray(steps, dtype=float), np.asarray(smoothed_loss(t, steps)))
            if len(means) < 2:
                continue
            widest = max(means)
            ref = means[widest]
            eos = 2.0 / lr
            spread = max(abs(m - ref) / ref for m in means.values())
            pointwise = []   # median over late steps of |λ_N(t) − λ_widest(t)| / λ_widest(t), per narrower width
            ref_steps, ref_values = curves[widest]
            for w in widths:
                if w == widest or w not in curves:
                    continue
                s, v = curves[w]
                rel = [abs(a - b) / b for x, a, b in zip(s, v, ref_values) if x >= WARMUP]
                pointwise.append(float(np.median(rel)))
            fits = consistency(curves)
            loss_fits = consistency(losses)
            per_lr[lr] = {
                "eos": eos, "late_mean": means, "late_ratio_to_eos": {w: m / eos for w, m in means.items()},
                "late_spread": spread, "pointwise_median_deviation": max(pointwise) if pointwise else None,
                "beta": {w: f["beta"] for w, f in fits.items()}, "a": {w: f["a"] for w, f in fits.items()},
                "late_g": {w: float(np.mean([g for t_, g in zip(f["t"], f["g"]) if t_ >= WARMUP]))
                           for w, f in fits.items()},
                "early_g": {w: float(np.mean([g for t_, g in zip(f["t"], f["g"]) if t_ < WARMUP]))
                            for w, f in fits.items()},
                "loss_beta": {w: f["beta"] for w, f in loss_fits.items()},
                "curves": {w: [c[0].tolist(), c[1].tolist()] for w, c in curves.items()},
            }
        out[spec] = per_lr
    return out


def figure(transfer: dict, sharp: dict, tdoc: dict, sdoc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    shown = {MUP: [0.5, 1.0], NTP: [2.0, 4.0]}
    specs = [s for s in (MUP, NTP) if s in sharp]
    widths = sorted({t["width"] for t in trials(sdoc, specs[0])})
    cmap = plt.get_cmap("viridis")
    color = {w: cmap(i / max(len(widths) - 1, 1)) for i, w in enumerate(widths)}
    names = {MUP: "µP (mean_field)", NTP: "NTP", SP: "SP (Kaiming init)"}
    fig, axes = plt.subplots(len(specs), 5, figsize=(21, 3.8 * len(specs)), squeeze=False)
    for r, spec in enumerate(specs):
        ax_s, ax_l, ax_t, ax_g = axes[r][:4]
        lrs = [lr for lr in shown[spec] if lr in sharp[spec]] or sorted(sharp[spec])[:1]
        for k, lr in enumerate(lrs):
            style = ["-", "--", ":"][k % 3]
            for w in widths:
                t = trial(sdoc, spec, w, lr)
                if t is None:
                    continue
                s, v = curve(t, "sharpness")
                ax_s.plot(s, v, style, marker="o", ms=2.5, color=color[w], label=f"N={w}" if k == 0 else None)
            ax_s.axhline(2 / lr, ls=(0, (4, 3)), color="gray" if k == 0 else "black", lw=1)
            ax_s.text(0, 2 / lr * 1.05, f"2/η0, η0={lr:g}", fontsize=7, color="gray" if k == 0 else "black")
        ax_s.set_yscale("log")
        ax_s.set_xlabel("step")
        ax_s.set_title(f"{names[spec]}: λmax(γ²H), η0 = " + ", ".join(f"{x:g} ({s})" for x, s in
                                                                    zip(lrs, ["solid", "dashed"])), fontsize=9)
        ax_s.legend(fontsize=7)
        lr = lrs[0]
        for w in widths:
            t = trial(sdoc, spec, w, lr)
            if t is None:
                continue
            _, loss = curve(t, "loss")
            loss = np.asarray(loss, dtype=float)
            k = np.ones(SMOOTH) / SMOOTH
            ax_l.plot(np.arange(SMOOTH - 1, len(loss)), np.convolve(loss, k, mode="valid"), color=color[w], lw=1,
                      label=f"N={w}")
        ax_l.set_xlabel("step")
        ax_l.set_title(f"{names[spec]}: train loss (mean of {SMOOTH} steps), η0 = {lr:g}", fontsize=9)
        _transfer_panel(ax_t, transfer[spec], names[spec], color)
        per = sharp[spec].get(lr)
        if per:
            for w, (ts, gs) in _g_curves(per).items():
                ax_g.loglog(ts, gs, "o", ms=3, color=color[w])
                beta, a = per["beta"].get(w), per["a"].get(w)
                if beta is not None:
                    x = np.asarray([ts[0], ts[-1]])
                    ax_g.loglog(x, a * x ** beta, "-", color=color[w], lw=1, label=f"N={w}: β = {beta:.2f}")
            ax_g.set_xlabel("step")
            ax_g.set_title(f"{names[spec]}: g(t) = |λ_N − λ_{max(widths)}|, η0 = {lr:g}, fit a·t^β", fontsize=9)
            ax_g.legend(fontsize=7)
            ax_g.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if SP in transfer:
        _transfer_panel(axes[0][4], transfer[SP], names[SP], color)
    else:
        axes[0][4].axis("off")
    ax = axes[-1][4]
    for spec, marker in ((MUP, "o"), (NTP, "s"), (SP, "^")):
        if spec not in transfer:
            continue
        stars = {w: v for w, v in transfer[spec]["eta_star"].items() if v}
        ws = sorted(stars)
        ax.plot(ws, [stars[w] / stars[ws[0]] for w in ws], marker=marker, label=names[spec])
    ax.axhspan(0.5, 2.0, color="gray", alpha=0.15, lw=0)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("width N")
    ax.set_title("η*(N) / η*(64); shaded: within one grid step (×2)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _g_curves(per: dict) -> dict:
    curves = {int(w): c for w, c in per["curves"].items()}
    widest = max(curves)
    ref = dict(zip(*curves[widest]))
    out = {}
    for w, (s, v) in sorted(curves.items()):
        if w == widest:
            continue
        pts = [(x, abs(y - ref[x])) for x, y in zip(s, v) if x > 0 and x in ref]
        out[w] = (np.asarray([p[0] for p in pts]), np.asarray([p[1] for p in pts]))
    return out


def _transfer_panel(ax, t: dict, name: str, color: dict) -> None:
    for w, per in sorted(t["losses"].items()):
        lrs = sorted(per)
        ys = [per[lr] if per[lr] is not None else np.nan for lr in lrs]
        ax.plot(lrs, ys, marker="o", ms=3, color=color.get(w, "k"), label=f"N={w}")
        star = t["eta_star"].get(w)
        if star:
            ax.axvline(star, color=color.get(w, "k"), ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("η0")
    ax.set_ylabel("final train loss")
    shift = t["shift_narrow_to_wide"]
    ax.set_title(f"{name}: η* shift {'—' if shift is None else f'{shift:+.2f}'} grid steps (64→1024)", fontsize=9)
    ax.legend(fontsize=7)


def run(out: Path, small: bool = False, sp: bool = False, redraw: bool = False) -> dict:
    """Run the sweeps into ``out`` (or, with ``redraw``, read the ones already there) and check the claims."""
    out = Path(out)
    start = time.perf_counter()
    seconds = {}

    def go(path: Path, target: Path, overrides: dict | None) -> tuple[dict, float]:
        return (report(target), math.nan) if redraw else sweep(path, target, overrides)

    tdoc, seconds["transfer"] = go(TRANSFER, out / "transfer", SMALL["transfer"] if small else None)
    print(f"transfer sweep: {seconds['transfer']:.0f} s", file=sys.stderr, flush=True)
    sdoc = {"specs": {}}
    for spec, path in SHARPNESS.items():
        doc, seconds[f"sharpness_{spec}"] = go(path, out / f"sharpness_{spec}", SMALL[spec] if small else None)
        sdoc["specs"].update(doc["specs"])
        print(f"sharpness sweep {spec}: {seconds[f'sharpness_{spec}']:.0f} s", file=sys.stderr, flush=True)
    if sp:
        doc, seconds["sp"] = go(SP_FILE, out / "sp", SMALL["sp"] if small else None)
        tdoc["specs"].update(doc["specs"])
        print(f"SP sweep: {seconds['sp']:.0f} s", file=sys.stderr, flush=True)
    transfer, sharp = transfer_summary(tdoc), sharpness_summary(sdoc)
    seconds["total"] = time.perf_counter() - start
    if redraw and (out / "results.json").exists():   # keep the wall times of the run that made the sweeps
        seconds = json.loads((out / "results.json").read_text())["summary"]["seconds"]
    summary = {"transfer": transfer, "sharpness": {s: {lr: {k: v for k, v in p.items() if k != "curves"}
                                                       for lr, p in per.items()} for s, per in sharp.items()},
               "seconds": seconds}
    figure(transfer, sharp, tdoc, sdoc, out / "repro_s2.png")
    (out / "results.json").write_text(json.dumps({"summary": summary, "sharpness_curves": {
        s: {lr: p["curves"] for lr, p in per.items()} for s, per in sharp.items()}}, default=str))
    return summary


def main() -> None:
    parser = runner_parser(__doc__.split("\n\n")[0], "out/s2", "three widths")
    parser.add_argument("--sp", action="store_true", help="also SP's η* (runners/repro_s2_sp.toml)")
    args = parser.parse_args()
    s = run(Path(args.out), args.small, args.sp, args.redraw)
    for spec, t in s["transfer"].items():
        stars = ", ".join(f"{w}: {v:.3g}" if v else f"{w}: —" for w, v in t["eta_star"].items())
        print(f"{spec}: η* {stars}; shift 64→1024 {t['shift_narrow_to_wide']:+.2f} grid steps "
              f"(all widths {t['shift_all']:.2f}); {t['transfer']}")
    for spec, per in s["sharpness"].items():
        for lr, p in per.items():
            means = ", ".join(f"{w}: {m:.3g}" for w, m in p["late_mean"].items())
            betas = ", ".join(f"{w}: {b:.2f}" for w, b in p["beta"].items() if b is not None)
            print(f"{spec} η0={lr:g} (2/η0={p['eos']:.3g}): late λ {means}; spread {100 * p['late_spread']:.1f} %; "
                  f"β {betas}")
    print("wall: " + ", ".join(f"{k} {v:.0f} s" for k, v in s["seconds"].items()))
    if args.figure:
        shutil.copyfile(Path(args.out) / "repro_s2.png", args.figure)


if __name__ == "__main__":
    main()
