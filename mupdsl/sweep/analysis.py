"""Learning-rate transfer: η* per size by parabolic interpolation in log η around the grid minimum, the shift of
η* across sizes in grid steps, and the verdict (PASS when the shift is at most one grid step; design.md §4)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np


def eta_star(lrs: list[float], losses: list[float]) -> float:
    """Minimiser of the loss over a log-spaced lr grid: the vertex of the parabola (in log η) fitted by least
    squares to the grid minimum and two neighbours on each side — or one, where the grid or a diverged point ends
    it — clamped to the nearest neighbours; the grid minimum at an edge or next to a diverged point. Five points
    rather than three because near the optimum the loss is flat and a single trial's noise decides which grid
    point is lowest."""
    order = np.argsort(lrs)
    x = np.log(np.asarray(lrs, dtype=float)[order])
    y = np.asarray(losses, dtype=float)[order]
    if not np.any(np.isfinite(y)):
        return math.nan
    i = int(np.nanargmin(np.where(np.isfinite(y), y, np.nan)))
    if 0 < i < len(x) - 1 and np.all(np.isfinite(y[i - 1:i + 2])):
        window = slice(i - 2, i + 3) if 1 < i < len(x) - 2 and np.all(np.isfinite(y[i - 2:i + 3])) \
            else slice(i - 1, i + 2)
        a, b, _ = np.polyfit(x[window], y[window], 2)
        if a > 0:
            return float(math.exp(min(max(-b / (2 * a), x[i - 1]), x[i + 1])))
    return float(math.exp(x[i]))


def grid_step(lrs: list[float]) -> float:
    x = np.log(np.sort(np.asarray(lrs, dtype=float)))
    return float(np.median(np.diff(x))) if len(x) > 1 else 1.0


def transfer(trials: list[dict[str, Any]], size: str = "width") -> dict[str, dict[str, Any]]:
    """Per spec: η* per width (mean final loss over seeds; diverged = +inf), shift in grid steps, verdict, and
    whether every η* lies inside the grid (``bracketed``; an η* at the grid's edge makes the shift a lower bound)."""
    by_spec: dict[str, dict[int, dict[float, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for t in trials:
        if t["status"] == "crashed":
            continue
        loss = t["final_loss"] if t["status"] == "done" and t["final_loss"] is not None else math.inf
        by_spec[t["spec"]][t[size]][t["lr"]].append(loss)
    out = {}
    for spec, widths in by_spec.items():
        stars, curves, bracketed = {}, {}, {}
        all_lrs = sorted({lr for w in widths.values() for lr in w})
        for width, per_lr in sorted(widths.items()):
            lrs = sorted(per_lr)
            losses = [float(np.mean(per_lr[lr])) if all(math.isfinite(v) for v in per_lr[lr]) else math.inf
                      for lr in lrs]
            stars[width] = eta_star(lrs, losses)
            curves[width] = dict(zip(lrs, losses))
            bracketed[width] = lrs[0] < stars[width] < lrs[-1] if math.isfinite(stars[width]) else False
        finite = [math.log(v) for v in stars.values() if math.isfinite(v) and v > 0]
        shift = (max(finite) - min(finite)) / grid_step(all_lrs) if len(finite) > 1 else 0.0
        out[spec] = {"eta_star": stars, "shift": shift, "transfer": "PASS" if shift <= 1.0 else "FAIL",
                     "bracketed": all(bracketed.values()), "losses": curves}
    return out


def power_law(t: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """Least-squares fit of y = a·t^β in log-log over the points with t > 0 and y > 0; (a, β) or None."""
    keep = (t > 0) & (y > 0) & np.isfinite(y)
    if keep.sum() < 2:
        return None
    beta, log_a = np.polyfit(np.log(t[keep]), np.log(y[keep]), 1)
    return float(math.exp(log_a)), float(beta)


def consistency(curves_by_width: dict[int, tuple[np.ndarray, np.ndarray]]) -> dict[int, dict[str, Any]]:
    """Seed 002 Eq. 3 / Fig. 3: g(t) = |S_N(t) − S_widest(t)| for each narrower width N (on the steps both have),
    with its power-law fit y = a·t^β."""
    if len(curves_by_width) < 2:
        return {}
    widest = max(curves_by_width)
    ref_t, ref_y = curves_by_width[widest]
    ref = dict(zip(ref_t.tolist(), ref_y.tolist()))
    out = {}
    for width, (t, y) in sorted(curves_by_width.items()):
        if width == widest:
            continue
        common = [(s, abs(v - ref[s])) for s, v in zip(t.tolist(), y.tolist()) if s in ref]
        if not common:
            continue
        ts, gs = np.asarray([c[0] for c in common], dtype=float), np.asarray([c[1] for c in common], dtype=float)
        fit = power_law(ts, gs)
        out[width] = {"t": ts, "g": gs, "a": fit[0] if fit else None, "beta": fit[1] if fit else None}
    return out


def phase(trials: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """γ–η phase portrait per spec (seed 003): final loss over the (γ, η) grid, η* per γ, and the slope of
    log η* against log γ (η* ∝ γ² in the lazy regime, γ^{2/L} in the ultra-rich one)."""
    out = {}
    for spec in sorted({t["spec"] for t in trials if t.get("gamma") is not None}):
        rows = [t for t in trials if t["spec"] == spec and t.get("gamma") is not None and t["status"] != "crashed"]
        gammas, lrs = sorted({t["gamma"] for t in rows}), sorted({t["lr"] for t in rows})
        grid = np.full((len(gammas), len(lrs)), np.inf)
        for t in rows:
            value = t["final_loss"] if t["status"] == "done" and t["final_loss"] is not None else np.inf
            i, j = gammas.index(t["gamma"]), lrs.index(t["lr"])
            grid[i, j] = value if not np.isfinite(grid[i, j]) else (grid[i, j] + value) / 2
        stars = [eta_star(lrs, list(row)) for row in grid]
        ok = [(g, s) for g, s in zip(gammas, stars) if math.isfinite(s)]
        slope = float(np.polyfit(np.log([g for g, _ in ok]), np.log([s for _, s in ok]), 1)[0]) if len(ok) > 1 else None
        out[spec] = {"gammas": gammas, "lrs": lrs, "loss": grid, "eta_star": stars, "slope": slope}
    return out
