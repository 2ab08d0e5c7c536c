"""Learning-rate transfer: η* per size by parabolic interpolation in log η around the grid minimum, the shift of
η* across sizes in grid steps, and the verdict (PASS when the shift is at most one grid step; design.md §4)."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np


def eta_star(lrs: list[float], losses: list[float]) -> float:
    """Minimiser of the loss over a log-spaced lr grid: the vertex of the parabola through the grid minimum and
    its two neighbours (in log η), clamped to them; the grid minimum at an edge or next to a diverged point."""
    order = np.argsort(lrs)
    x = np.log(np.asarray(lrs, dtype=float)[order])
    y = np.asarray(losses, dtype=float)[order]
    if not np.any(np.isfinite(y)):
        return math.nan
    i = int(np.nanargmin(np.where(np.isfinite(y), y, np.nan)))
    if 0 < i < len(x) - 1 and np.all(np.isfinite(y[i - 1:i + 2])):
        a, b, _ = np.polyfit(x[i - 1:i + 2], y[i - 1:i + 2], 2)
        if a > 0:
            return float(math.exp(min(max(-b / (2 * a), x[i - 1]), x[i + 1])))
    return float(math.exp(x[i]))


def grid_step(lrs: list[float]) -> float:
    x = np.log(np.sort(np.asarray(lrs, dtype=float)))
    return float(np.median(np.diff(x))) if len(x) > 1 else 1.0


def transfer(trials: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per spec: η* per width (mean final loss over seeds; diverged = +inf), shift in grid steps, verdict, and
    whether every η* lies inside the grid (``bracketed``; an η* at the grid's edge makes the shift a lower bound)."""
    by_spec: dict[str, dict[int, dict[float, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for t in trials:
        if t["status"] == "crashed":
            continue
        loss = t["final_loss"] if t["status"] == "done" and t["final_loss"] is not None else math.inf
        by_spec[t["spec"]][t["width"]][t["lr"]].append(loss)
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
