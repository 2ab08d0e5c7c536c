"""Learning-rate transfer: η* per size by parabolic interpolation in log η around the grid minimum, the shift of
η* across sizes in grid steps, and two verdicts per spec (design.md §4):

- **transfer** — PASS when η* moves at most one grid step across the sizes, FAIL when it moves more; UNDECIDED
  (with the reason) unless there are at least ``MIN_SIZES`` sizes, every size has an η* (some trial converged)
  and every η* is bracketed inside the grid (:func:`bracketed`), and — with several seeds — unless resampling
  the seeds keeps the shift on one side of the bound (:func:`shift_spread`). See :func:`transfer_verdict`.
- **wider is better** — the best loss over the grid does not get worse with size beyond noise (TP5; under NTP
  η* can stay while feature learning fades with width). See :func:`wider_verdict`.

Sizes whose every trial diverged or crashed are kept, with the reason, never dropped; trials of a γ sweep are
left to :func:`phase` (slopes, no transfer verdict).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable

import numpy as np

MIN_SIZES = 3
"""Sizes a transfer verdict needs: two η* always lie on a line and say nothing about a trend."""
BETTER = {"width": "wider is better", "depth": "deeper is better"}
"""The second verdict's name by the size a sweep varies."""
MAX_SHIFT = 1.0
"""The largest shift of η* across sizes, in grid steps, that still counts as transfer."""
REL_TOL = 0.02
"""With one seed, "wider is better" tolerates a wider size's best loss up to 2 % above a narrower one's."""
NOISE_SIGMAS = 2.0
"""With several seeds, it tolerates this many standard errors of the difference of the two means."""
RESAMPLES = 500
"""Seed resamples behind :func:`shift_spread`."""
SPREAD_PERCENTILES = (5.0, 95.0)
"""The shift's spread over seed resamples: the central 90 %."""


def mean_loss(values: list[float]) -> float:
    """The loss of one grid point over seeds: their mean, or +inf when any of them diverged (+inf)."""
    return float(np.mean(values)) if all(math.isfinite(v) for v in values) else math.inf


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
    """The median spacing of the grid in log η (1 for a one-point grid)."""
    x = np.log(np.sort(np.asarray(lrs, dtype=float)))
    return float(np.median(np.diff(x))) if len(x) > 1 else 1.0


def bracketed(lrs: list[float], losses: list[float]) -> bool:
    """Whether the grid minimum (a diverged rate counts as +inf) has a grid point on each side: η* is then
    inside the grid. At the first or last rate the optimum may lie beyond the grid, and so may any shift."""
    order = np.argsort(lrs)
    y = np.asarray(losses, dtype=float)[order]
    if not np.any(np.isfinite(y)):
        return False
    i = int(np.nanargmin(np.where(np.isfinite(y), y, np.nan)))
    return 0 < i < len(y) - 1


def unconverged_reason(statuses: list[str]) -> str | None:
    """Why a size has no η*: None when some trial finished; else which way all of them ended."""
    if "done" in statuses:
        return None
    kinds = sorted(set(statuses))
    if kinds == ["diverged"]:
        return "every trial diverged"
    if kinds == ["crashed"]:
        return "every trial crashed"
    return "every trial diverged or crashed"


def shift_of(stars: dict[Any, float | None], step: float) -> float | None:
    """max − min of log η* over the sizes that have one, in grid steps; None with fewer than two."""
    logs = [math.log(v) for v in stars.values() if v is not None and math.isfinite(v) and v > 0]
    return (max(logs) - min(logs)) / step if len(logs) > 1 else None


def shift_spread(curves: dict[Any, dict[Any, dict[float, float]]], step: float,
                 resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float] | None:
    """How far seed noise alone moves the shift of η*: its ``SPREAD_PERCENTILES`` over resamples of the runs
    (a percentile bootstrap, Efron & Tibshirani 1993, ch. 13; the generator is seeded, so a report is
    reproducible). ``curves[size][unit][lr]`` is one run's final loss (+inf where it diverged); a unit is a
    seed (with the other size, when a sweep pools two). A resample draws as many units as a size has, with
    replacement, and takes η* of the mean curves as :func:`transfer` does: at each rate the drawn units that have
    a loss there are averaged (a crashed trial leaves only itself out) and one that diverged makes it +inf. When
    every size has the same units, one draw serves all sizes — a seed sees the same batches at every size, so
    its runs are paired — else each size draws its own. With k seeds the resamples see only the spread among
    them, about √((k−1)/k) of the true one: a floor on the noise, not a bound. None unless every size has at
    least two units."""
    tables = []
    for per_unit in curves.values():
        units = sorted(per_unit, key=repr)
        if len(units) < 2:
            return None
        lrs = sorted({lr for c in per_unit.values() for lr in c})
        tables.append((units, lrs, np.asarray([[per_unit[u].get(lr, np.nan) for lr in lrs] for u in units])))
    paired = all(units == tables[0][0] for units, _, _ in tables)
    rng = np.random.default_rng(seed)
    shifts = []
    for _ in range(resamples):
        shared = rng.integers(0, len(tables[0][0]), len(tables[0][0])) if paired else None
        stars = {}
        for i, (units, lrs, table) in enumerate(tables):
            drawn = table[shared if paired else rng.integers(0, len(units), len(units))]
            stars[i] = _star_of_mean(lrs, drawn)
        shift = shift_of(stars, step)
        if shift is not None:
            shifts.append(shift)
    if not shifts:
        return None
    lo, hi = np.percentile(shifts, SPREAD_PERCENTILES)
    return float(lo), float(hi)


def _star_of_mean(lrs: list[float], drawn: np.ndarray) -> float | None:
    """η* of the mean of ``drawn`` runs (rows; NaN where a run has no loss at a rate), as :func:`transfer`
    averages: a rate no drawn run has is left out, and one that any drawn run diverged at is +inf."""
    present = ~np.isnan(drawn)
    count = present.sum(axis=0)
    values = np.where(present, drawn, 0.0)
    mean = values.sum(axis=0) / np.maximum(count, 1)
    mean[np.isinf(values).any(axis=0)] = math.inf
    keep = count > 0
    if not np.isfinite(mean[keep]).any():
        return None
    return eta_star([lr for lr, k in zip(lrs, keep) if k], mean[keep].tolist())


def transfer_verdict(stars: dict[Any, float | None], inside: dict[Any, bool], step: float,
                     failed: dict[Any, str] | None = None, size: str = "width",
                     spread: tuple[float, float] | None = None) -> tuple[str, str]:
    """The transfer verdict and its reason.

    UNDECIDED when fewer than ``MIN_SIZES`` sizes were swept, when a size has no η* (every trial diverged or
    crashed: ``failed`` gives why, else "no η*"), or when an η* is not bracketed (``inside`` false: the grid
    minimum is its first or last rate) — the reasons are joined. Otherwise PASS when the shift of η*
    (:func:`shift_of`) is at most ``MAX_SHIFT`` grid steps, FAIL when it is more — unless the shift's
    estimate and both ends of its ``spread`` over seed resamples (:func:`shift_spread`) are not all on one side of
    ``MAX_SHIFT``: then seed noise decides between the two, and the verdict is UNDECIDED. The reason gives the
    spread where there is one."""
    failed = failed or {}
    reasons = []
    missing = [w for w, v in stars.items() if v is None or not math.isfinite(v)]
    if stars and len(missing) == len(stars):
        reasons.append(f"no {size} has an η*: " + ", ".join(sorted({failed.get(w, "no η*") for w in missing})))
    else:
        reasons += [f"{size} {w}: {failed.get(w, 'no η*')}" for w in sorted(missing)]
    if len(stars) < MIN_SIZES:
        reasons.append(f"{len(stars)} {size}{'s' if len(stars) != 1 else ''} swept; a transfer verdict needs at "
                       f"least {MIN_SIZES}")
    shift = shift_of(stars, step)
    edges = [w for w in sorted(stars) if w not in missing and not inside.get(w, False)]
    if edges:
        bound = f" (shift ≥ {shift:.2f} grid steps)" if shift is not None else ""
        reasons.append(f"η* at the grid's edge at {size} {', '.join(map(str, edges))}: widen the grid{bound}")
    if reasons:
        return "UNDECIDED", "; ".join(reasons)
    if shift is None:   # unreachable with MIN_SIZES ≥ 2 sizes that all have an η*
        return "UNDECIDED", "fewer than two η*"
    moves = f"η* moves {shift:.2f} grid steps across {len(stars)} {size}s"
    lo, hi = SPREAD_PERCENTILES
    seeds = "" if spread is None else \
        f"; over seed resamples {spread[0]:.2f}–{spread[1]:.2f} ({lo:g}th–{hi:g}th percentile)"
    sides = {shift <= MAX_SHIFT + 1e-9} | ({v <= MAX_SHIFT + 1e-9 for v in spread} if spread is not None else set())
    if len(sides) > 1:
        return "UNDECIDED", (f"{moves}{seeds}: the estimate and the resamples are not all on one side of "
                             f"{MAX_SHIFT:g}, so seed noise decides between PASS and FAIL; add seeds")
    if shift <= MAX_SHIFT + 1e-9:
        return "PASS", f"{moves} (at most {MAX_SHIFT:g}){seeds}"
    return "FAIL", f"{moves} (more than {MAX_SHIFT:g}){seeds}"



def noise(a: list[float], b: list[float]) -> float:
    """How much two best losses may differ by chance: ``NOISE_SIGMAS`` standard errors of the difference of
    their means when both come from more than one seed, else ``REL_TOL`` of the first (the narrower size's)."""
    if len(a) > 1 and len(b) > 1:
        se2 = np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b)
        return float(NOISE_SIGMAS * math.sqrt(se2))
    return REL_TOL * abs(float(np.mean(a)))


def wider_verdict(best: dict[Any, list[float] | None], failed: dict[Any, str] | None = None,
                  size: str = "width") -> tuple[str, str]:
    """"Wider is better" and its reason. ``best`` holds, per size, the per-seed final losses at its best rate
    (the grid point with the lowest mean, not an interpolated minimum: a grid too coarse for the loss's
    curvature adds its own spread), or None where no rate converged.

    FAIL when some size's best mean loss exceeds a narrower size's by more than :func:`noise` (the worst such
    pair is named); else UNDECIDED when fewer than two sizes have a best loss or some size has none; else PASS."""
    failed = failed or {}
    have = sorted(w for w, v in best.items() if v)
    worst = None
    for i, narrow in enumerate(have):
        for wide in have[i + 1:]:
            a, b = best[narrow], best[wide]
            excess = float(np.mean(b) - np.mean(a))
            tol = noise(a, b)
            if excess > tol and (worst is None or excess - tol > worst[0]):
                worst = (excess - tol, narrow, wide, float(np.mean(a)), float(np.mean(b)), tol)
    if worst is not None:
        _, narrow, wide, a, b, tol = worst
        return "FAIL", (f"best loss at {size} {wide} ({b:.4g}) is above {size} {narrow}'s ({a:.4g}) by "
                        f"{b - a:.3g}, beyond the noise {tol:.2g}")
    missing = [w for w in sorted(best) if not best[w]]
    if missing:
        return "UNDECIDED", "; ".join(f"{size} {w}: {failed.get(w, 'no converged trial')}" for w in missing)
    if len(have) < 2:
        return "UNDECIDED", f"{len(have)} {size} swept; comparing needs at least 2"
    return "PASS", f"the best loss does not grow with {size} beyond noise across {len(have)} {size}s"


def transfer(trials: list[dict[str, Any]], size: str = "width") -> dict[str, dict[str, Any]]:
    """Per spec (trials of a γ sweep excluded: see :func:`phase`): η* per size from the mean final loss over
    seeds (a diverged trial counts +inf, a crashed one is left out; None where no trial converged, with the
    reason in ``failed``), whether each η* is bracketed, the best rate and loss per size, the shift in grid steps
    (None with fewer than two η*) and its spread over seed resamples (``shift_spread``: None with one seed), the
    two verdicts with their reasons, and the trial counts per size."""
    by_spec: dict[str, dict[Any, dict[float, list[float]]]] = \
        defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    by_unit: dict[str, dict[Any, dict[Any, dict[float, float]]]] = \
        defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    statuses: dict[str, dict[Any, list[str]]] = defaultdict(lambda: defaultdict(list))
    for t in trials:
        if t.get("gamma") is not None:
            continue
        statuses[t["spec"]][t[size]].append(t["status"])
        if t["status"] == "crashed":
            continue
        finite = t["status"] == "done" and t["final_loss"] is not None and math.isfinite(t["final_loss"])
        by_spec[t["spec"]][t[size]][t["lr"]].append(t["final_loss"] if finite else math.inf)
        unit = (t.get("seed"), t.get("depth" if size == "width" else "width"))
        by_unit[t["spec"]][t[size]][unit][t["lr"]] = t["final_loss"] if finite else math.inf
    out = {}
    for spec, per_size in sorted(statuses.items()):
        stars, curves, inside, best, best_lr, failed, counts = {}, {}, {}, {}, {}, {}, {}
        all_lrs = sorted({lr for w in by_spec[spec].values() for lr in w})
        for width in sorted(per_size):
            per_lr = by_spec[spec].get(width, {})
            counts[width] = {s: per_size[width].count(s) for s in ("done", "diverged", "crashed")}
            lrs = sorted(per_lr)
            losses = [mean_loss(per_lr[lr]) for lr in lrs]
            curves[width] = dict(zip(lrs, losses))
            reason = unconverged_reason(per_size[width])
            if reason is None and not any(math.isfinite(v) for v in losses):
                reason = "no rate converged for every seed"
            if reason is not None:
                failed[width] = reason
                stars[width], inside[width], best[width], best_lr[width] = None, False, None, None
                continue
            stars[width] = eta_star(lrs, losses)
            inside[width] = bracketed(lrs, losses)
            k = int(np.argmin(losses))
            best_lr[width], best[width] = lrs[k], [float(v) for v in per_lr[lrs[k]]]
        step = grid_step(all_lrs)
        runs = {w: c for w, c in by_unit[spec].items() if w in stars}
        spread = shift_spread(runs, step) if not failed and all(u[0] is not None for c in runs.values() for u in c) \
            else None
        verdict, reason = transfer_verdict(stars, inside, step, failed, size, spread)
        wider, wider_reason = wider_verdict(best, failed, size)
        out[spec] = {"eta_star": stars, "bracketed": all(inside.values()) if inside else False, "inside": inside,
                     "shift": shift_of(stars, step), "shift_spread": spread, "grid_step": step, "transfer": verdict,
                     "transfer_reason": reason, "wider_is_better": wider, "wider_is_better_reason": wider_reason,
                     "best_lr": best_lr, "best_loss": {w: float(np.mean(v)) if v else None for w, v in best.items()},
                     "failed": failed, "counts": counts, "losses": curves}
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


def sharpness_spread(curves_by_width: dict[int, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any] | None:
    """Seed 002 Fig. 1's claim in one number per run: the median of each width's sharpness measurements (robust to
    single mini-batch outliers) and the widest width's median over the narrowest's — ≈ 1 when the curves lie
    together (µP), growing with width when they separate (SP). None with fewer than two widths."""
    medians = {w: float(np.nanmedian(y)) for w, (_, y) in sorted(curves_by_width.items()) if len(y)}
    if len(medians) < 2:
        return None
    narrow, wide = medians[min(medians)], medians[max(medians)]
    return {"median": medians, "ratio": wide / narrow if narrow > 0 else None}


def log_slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log y against log x over (x, y) points; None with fewer than two."""
    if len(points) < 2:
        return None
    return float(np.polyfit(np.log([x for x, _ in points]), np.log([y for _, y in points]), 1)[0])


def phase(trials: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """γ–η phase portrait per spec (seed 003): final loss over the (γ, η) grid, η* per γ, and the slope of
    log η* against log γ over all γ (``slope``), over γ ≤ 1 (``slope_small``: 2 in the lazy regime) and over
    γ ≥ 1 (``slope_large``: 2/L in the ultra-rich one), from the γ whose η* is bracketed inside the grid (an η*
    at the grid's first or last rate is a bound; those γ are listed in ``unbracketed``); None where fewer than two
    γ qualify. A γ sweep gets these slopes and no transfer verdict.

    Each cell is the mean final loss over seeds, +inf when any seed diverged there (as :func:`transfer` averages)
    or when no trial finished. A portrait is one network size: when the sweep has several, it is drawn at the
    widest (then deepest), named in ``size``, and the others are counted in ``other_sizes``."""
    out = {}
    for spec in sorted({t["spec"] for t in trials if t.get("gamma") is not None}):
        rows = [t for t in trials if t["spec"] == spec and t.get("gamma") is not None and t["status"] != "crashed"]
        sizes = sorted({(t["width"], t.get("depth") or 0) for t in rows})
        width, depth = sizes[-1] if sizes else (None, 0)
        rows = [t for t in rows if (t["width"], t.get("depth") or 0) == (width, depth)]
        gammas, lrs = sorted({t["gamma"] for t in rows}), sorted({t["lr"] for t in rows})
        cells: dict[tuple[int, int], list[float]] = defaultdict(list)
        for t in rows:
            value = t["final_loss"] if t["status"] == "done" and t["final_loss"] is not None else np.inf
            cells[gammas.index(t["gamma"]), lrs.index(t["lr"])].append(value)
        grid = np.full((len(gammas), len(lrs)), np.inf)
        for (i, j), values in cells.items():
            grid[i, j] = mean_loss(values)
        stars = [eta_star(lrs, list(row)) for row in grid]
        inside = [bracketed(lrs, list(row)) for row in grid]
        # an η* at the grid's edge is only a bound: it stays out of the fits, and the result says which
        ok = [(g, s) for g, s, b in zip(gammas, stars, inside) if math.isfinite(s) and b]
        out[spec] = {"size": {"width": width, "depth": depth or None}, "other_sizes": len(sizes) - 1,
                     "gammas": gammas, "lrs": lrs, "loss": grid, "eta_star": stars, "bracketed": inside,
                     "unbracketed": [g for g, s, b in zip(gammas, stars, inside) if math.isfinite(s) and not b],
                     "slope": log_slope(ok),
                     "slope_small": log_slope([(g, s) for g, s in ok if g <= 1]),
                     "slope_large": log_slope([(g, s) for g, s in ok if g >= 1])}
    return out


def measured_rate(trials: list[dict[str, Any]], curves_of: Callable[[str], dict], lr: float) -> float | None:
    """The learning rate nearest ``lr`` whose trials carry a sharpness curve (``[measure] sharpness_lrs`` may
    measure a few rates only), or None when none does."""
    rates = sorted({t["lr"] for t in trials}, key=lambda v: abs(math.log(v) - math.log(lr)))
    for rate in rates:
        if any(len(curves_of(t["id"]).get("sharpness", [])) for t in trials
               if t["lr"] == rate and t["status"] != "crashed"):
            return rate
    return None


def sharpness_curves(trials: list[dict[str, Any]], curves_of: Callable[[str], dict], rates: dict[str, float],
                     size: str = "width") -> dict[str, tuple[float, dict[int, tuple[np.ndarray, np.ndarray]]]]:
    """Per spec, the measured rate nearest ``rates[spec]`` (the rate of seed 002 Fig. 3's comparison) — the same
    choice as the figure's — and each size's sharpness curve there: (steps, values) of the first finished trial
    (lowest seed), kept when it has at least two measurements; specs without any are left out."""
    out = {}
    for spec, lr in sorted(rates.items()):
        lr = measured_rate([t for t in trials if t["spec"] == spec], curves_of, lr)
        rows = [t for t in trials if t["spec"] == spec and t["status"] == "done"]
        curves = {}
        for n in sorted({t[size] for t in rows}):
            pick = [t for t in rows if t[size] == n and t["lr"] == lr]
            if pick:
                c = curves_of(pick[0]["id"])
                if len(c.get("sharpness", [])) >= 2:
                    curves[n] = (np.asarray(c["sharp_step"]), np.asarray(c["sharpness"]))
        if curves:
            out[spec] = (lr, curves)
    return out
