"""Reproduce seed 002 Sec. 5 (claim S1 of docs/reproductions.md): the two-layer linear network f = E V / (γ√(ND))
on X = I_D, Y = w* = 1 (D = 16, as Fig. 10 with a smaller D), trained by full-batch GD with η = η0 γ² in float64.

Claims checked, with the numbers written to ``results.json`` and the figure to ``linear_theory.png`` (the layout of
Fig. 10, loss per step for µP and NTP, with the sharpness of γ²H beneath):

1. Thm 5.1: the latent variables (w, e, v) of simulated GD follow the evolution laws exactly (largest deviation).
2. Cor. 5.4: under µP (γ = √N) λmax(γ²H) follows the same trajectory at every width and settles below 2/η0 when
   η0 is below the edge; under NTP (γ = 1) it settles lower the wider the network (the NTK freezes).
3. Prop. 5.3: at the η0 where µP's minimizer is marginally stable (η0 = 1 here: λmax = 2 = 2/η0 at the minimizer
   GD finds), λmax(γ²H) settles in [2/η0, 2/η0 + η0 γ² ‖w*‖²/(ND)] — approached from below, as GD converges to a
   marginally stable point at a sub-linear rate.

    python runners/linear_theory_s1.py --out out/s1 [--small]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mupdsl.theory import linear_net as ln  # noqa: E402

DIM = 16
MUP_ETAS = (0.25, 0.5, 0.9)
NTP_ETAS = (2.0, 4.0, 6.0)
EDGE_ETA = 1.0


def trajectory(width: int, gamma: float, eta0: float, steps: int, every: int, seed: int = 0) -> dict:
    """Loss per step, λmax(γ²H) every ``every`` steps, and the largest deviation of the latent laws from GD."""
    w_star = torch.ones(DIM, dtype=torch.float64)
    E, V = ln.draw(width, DIM, seed)
    state = ln.latent(E, V, gamma)
    losses, sharp_steps, sharp, deviation, vec = [ln.loss(E, V, gamma, w_star)], [], [], 0.0, None
    for t in range(steps + 1):
        if not math.isfinite(losses[-1]):
            break   # diverged: the curves end here
        if t % every == 0 or t == steps:
            value, vec = ln.sharpness(E, V, gamma, w_star, start=vec)
            sharp_steps.append(t)
            sharp.append(value)
        if t == steps:
            break
        E, V = ln.gd_step(E, V, gamma, w_star, eta0)
        state = ln.latent_step(state, w_star, eta0, gamma, width)
        ref = ln.latent(E, V, gamma)
        size = max(float(ref.w.abs().max()), float(ref.e.abs().max()), ref.v, 1.0)
        deviation = max(deviation, float((state.w - ref.w).abs().max()) / size,
                        float((state.e - ref.e).abs().max()) / size, abs(state.v - ref.v) / size)
        losses.append(ln.loss(E, V, gamma, w_star))
    lo, hi = ln.eos_interval(eta0, gamma, w_star, width)
    return {"width": width, "gamma": gamma, "eta0": eta0, "loss": losses, "sharpness_steps": sharp_steps,
            "sharpness": sharp, "latent_deviation": deviation, "eos_interval": [lo, hi]}


def run(out: Path, small: bool) -> dict:
    widths = (64, 256, 1024) if small else (64, 256, 1024, 4096)
    steps, every, edge_steps = (150, 5, 8000) if small else (300, 5, 20000)
    start = time.perf_counter()
    runs = {"mup": [], "ntp": []}
    for w in widths:
        for eta0 in MUP_ETAS:
            runs["mup"].append(trajectory(w, math.sqrt(w), eta0, steps, every))
        for eta0 in NTP_ETAS:
            runs["ntp"].append(trajectory(w, 1.0, eta0, steps, every))
        print(f"width {w}: done ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    edge = [trajectory(w, math.sqrt(w), EDGE_ETA, edge_steps, edge_steps // 4) for w in (widths[0], widths[-1])]
    summary = summarize(runs, edge)
    summary["seconds"] = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"summary": summary, "runs": runs, "edge": edge}))
    plot(runs, out / "linear_theory.png")
    return summary


def summarize(runs: dict, edge: list[dict]) -> dict:
    """The numbers each claim is judged by (docs/reproductions.md, S1)."""
    final = {p: {(r["eta0"], r["width"]): r["sharpness"][-1] for r in rs} for p, rs in runs.items()}
    mup_spread = {eta0: _spread([v for (e, _), v in final["mup"].items() if e == eta0]) for eta0 in MUP_ETAS}
    # along training: the largest relative spread across widths at any measured step (µP)
    mup_path_spread = {}
    for eta0 in MUP_ETAS:
        curves = [r["sharpness"] for r in runs["mup"] if r["eta0"] == eta0]
        mup_path_spread[eta0] = max(_spread(list(col)) for col in zip(*curves))
    ntp_by_width = {eta0: [final["ntp"][(eta0, w)] for w in sorted({w for (e, w) in final["ntp"] if e == eta0})]
                    for eta0 in NTP_ETAS}
    return {
        "latent_deviation": max(r["latent_deviation"] for rs in runs.values() for r in rs),
        "mup_final": {str(k): v for k, v in final["mup"].items()},
        "mup_final_spread": mup_spread,
        "mup_path_spread": mup_path_spread,
        "mup_below_edge": all(v < 2 / e for (e, _), v in final["mup"].items()),
        "ntp_final_by_width": ntp_by_width,
        "ntp_decreasing": all(all(a > b for a, b in zip(v, v[1:])) for v in ntp_by_width.values()),
        "ntp_final_spread": {eta0: _spread(v) for eta0, v in ntp_by_width.items()},
        "edge": [{"width": r["width"], "eta0": r["eta0"], "sharpness": r["sharpness"][-1],
                  "eos_interval": r["eos_interval"], "loss": r["loss"][-1]} for r in edge],
    }


def _spread(values: list[float]) -> float:
    return (max(values) - min(values)) / max(abs(min(values)), 1e-30)


def plot(runs: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    styles = ["-", "--", ":"]
    for col, (name, etas) in enumerate((("mup", MUP_ETAS), ("ntp", NTP_ETAS))):
        widths = sorted({r["width"] for r in runs[name]})
        colors = {w: plt.cm.viridis(i / max(1, len(widths) - 1)) for i, w in enumerate(widths)}
        for r in runs[name]:
            style = styles[etas.index(r["eta0"])]
            label = f"N={r['width']}" if r["eta0"] == etas[0] else None
            axes[0, col].semilogy(r["loss"], style, color=colors[r["width"]], label=label)
            axes[1, col].plot(r["sharpness_steps"], r["sharpness"], style, color=colors[r["width"]])
        for eta0, style in zip(etas, styles):
            axes[1, col].axhline(2 / eta0, color="grey", linestyle=style, linewidth=0.8)
        title = "µP (γ = √N)" if name == "mup" else "NTP (γ = 1)"
        axes[0, col].set_title(f"{title}; η0 = " + ", ".join(f"{e:g}" for e in etas) + " (−, −−, ··)")
        axes[0, col].set_ylabel("loss ½‖w − w*‖²")
        axes[1, col].set_ylabel("λmax(γ²H)  (grey: 2/η0)")
        axes[1, col].set_xlabel("step")
        axes[0, col].legend(fontsize=8)
    axes[1, 0].set_ylim(0, 4.5)   # µP's 2/η0 = 8 (η0 = 0.25) is above the panel
    fig.suptitle("Seed 002 Sec. 5: two-layer linear network, D = 16, w* = 1, GD with η = η0 γ², float64")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/linear_theory_s1")
    parser.add_argument("--small", action="store_true", help="widths 64–1024 and fewer steps (CPU minutes)")
    args = parser.parse_args()
    print(json.dumps(run(Path(args.out), args.small), indent=1, default=str))
