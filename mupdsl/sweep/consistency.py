"""Consistency across widths at a fixed learning rate (seed 004, Vyas et al.): how far each width's loss curve,
pointwise logits and feature kernel are from the widest network's, and what ensembling over seeds buys.

Per spec, at one learning rate η (the grid's rate nearest the narrowest width's η*), for each narrower width N and
each seed present at both N and the widest width W:

* loss curves: mean over evaluations of |L_N(t) − L_W(t)| (test loss);
* logits: ‖f_N − f_W‖ / ‖f_W‖ on the probe examples at the last evaluation both reached (seed 004 Fig. 3 d–f,
  RMS distance scaled by the widest's RMS);
* feature kernels: ‖K_N/‖K_N‖ − K_W/‖K_W‖‖_F of the readout's input features at that evaluation (seed 004 Fig. 5).

Each averaged over seeds; ``shrinks`` says whether the distance falls with width (log-log slope < 0 over the
narrower widths). Ensembles (seed 004 Sec. 3): the cross-entropy on the probe examples of the seed-averaged logits
against the mean single-network loss, per width; the "bias of narrower width" holds when the narrowest width's
ensemble is worse than one network at the widest.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np


def _cross_entropy(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean cross-entropy of ``logits`` (n, …, C) against integer ``targets`` (n, …)."""
    z = logits.reshape(-1, logits.shape[-1])
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    t = targets.reshape(-1).astype(int)
    return float(-log_p[np.arange(len(t)), t].mean())


def _slope(widths: list[int], values: list[float]) -> float | None:
    pairs = [(w, v) for w, v in zip(widths, values) if v is not None and v > 0 and math.isfinite(v)]
    if len(pairs) < 2:
        return None
    return float(np.polyfit(np.log([w for w, _ in pairs]), np.log([v for _, v in pairs]), 1)[0])


def _distances(c: dict, ref: dict) -> dict[str, float | None]:
    """The three distances of one trial's curves ``c`` to the widest's ``ref`` (same lr and seed)."""
    out: dict[str, float | None] = {"loss": None, "logits": None, "kernel": None}
    steps, ref_steps = list(np.asarray(c.get("eval_step", []))), list(np.asarray(ref.get("eval_step", [])))
    common = [s for s in steps if s in ref_steps]
    if common:
        mine = dict(zip(steps, np.asarray(c["eval_loss"])))
        theirs = dict(zip(ref_steps, np.asarray(ref["eval_loss"])))
        out["loss"] = float(np.mean([abs(mine[s] - theirs[s]) for s in common]))
    for key, name in (("probe_logits", "logits"), ("probe_kernel", "kernel")):
        a, b = c.get(key), ref.get(key)
        if a is None or b is None or not len(a) or not len(b):
            continue
        last = min(len(a), len(b)) - 1            # the last evaluation both reached
        x, y = np.asarray(a[last], dtype=float), np.asarray(b[last], dtype=float)
        if name == "logits":
            out[name] = float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30))
        else:
            out[name] = float(np.linalg.norm(x / max(np.linalg.norm(x), 1e-30) - y / max(np.linalg.norm(y), 1e-30)))
    return out


def width_consistency(trials: list[dict[str, Any]], curves_of: Callable[[str], dict], lr_of: dict[str, float],
                      size: str = "width") -> dict[str, dict[str, Any]]:
    """Per spec (at the learning rate ``lr_of[spec]``): distances to the widest per size and metric, their slopes
    against size, and the ensemble table. Specs with fewer than two sizes at that rate are left out."""
    out = {}
    for spec, lr in lr_of.items():
        rows = [t for t in trials if t["spec"] == spec and t["lr"] == lr and t["status"] == "done"]
        sizes = sorted({t[size] for t in rows})
        if len(sizes) < 2:
            continue
        widest = sizes[-1]
        by = {(t[size], t["seed"]): t for t in rows}
        curves = {key: curves_of(t["id"]) for key, t in by.items()}
        distances: dict[int, dict[str, float | None]] = {}
        for n in sizes[:-1]:
            seeds = [s for (w, s) in by if w == n and (widest, s) in by]
            each = [_distances(curves[(n, s)], curves[(widest, s)]) for s in seeds]
            distances[n] = {m: (float(np.mean([d[m] for d in each])) if each and all(d[m] is not None for d in each)
                                else None) for m in ("loss", "logits", "kernel")}
        narrower = sizes[:-1]
        slopes = {m: _slope(narrower, [distances[n][m] for n in narrower]) for m in ("loss", "logits", "kernel")}
        out[spec] = {"lr": lr, "widest": widest, "distance": distances, "slope": slopes,
                     "shrinks": {m: (None if s is None else s < 0) for m, s in slopes.items()},
                     "ensemble": _ensembles(sizes, by, curves, size)}
    return out


def _ensembles(sizes, by, curves, size: str) -> dict[str, Any] | None:
    """Per size: the seeds' mean single-network probe loss and the loss of their averaged logits (needs ≥ 2
    seeds and integer targets)."""
    table = {}
    for n in sizes:
        logits, targets = [], None
        for (w, _), c in curves.items():
            if w == n and c.get("probe_logits") is not None and len(c["probe_logits"]):
                logits.append(np.asarray(c["probe_logits"][-1], dtype=float))
                targets = np.asarray(c.get("probe_targets", []), dtype=float)
        if len(logits) < 2 or targets is None or not targets.size or not np.allclose(targets, np.round(targets)):
            continue
        if any(x.shape != logits[0].shape for x in logits):
            continue
        single = float(np.mean([_cross_entropy(x, targets) for x in logits]))
        table[n] = {"single": single, "ensemble": _cross_entropy(np.mean(logits, axis=0), targets),
                    "members": len(logits)}
    if len(table) < 2:
        return None
    narrow, wide = min(table), max(table)
    return {"by_size": table, "bias_of_narrower_width": table[narrow]["ensemble"] > table[wide]["single"],
            "size": size}


def consistency_rates(trials: list[dict[str, Any]], analysis: dict[str, dict[str, Any]], size: str = "width"
                      ) -> dict[str, float]:
    """Per spec, the learning rate its consistency is measured at: the grid's rate nearest the narrowest size's η*
    (specs without one are left out)."""
    out = {}
    for spec, a in analysis.items():
        rows = [t for t in trials if t["spec"] == spec and t["status"] == "done"]
        sizes = sorted({t[size] for t in rows})
        star = a["eta_star"].get(sizes[0]) if sizes else None
        if star is None or not math.isfinite(star):
            continue
        out[spec] = min(sorted({t["lr"] for t in rows}), key=lambda v: abs(math.log(v) - math.log(star)))
    return out

