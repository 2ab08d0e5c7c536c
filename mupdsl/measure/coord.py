"""Coordinate check with a verdict (TP5 App. B / design.md §4).

For each width and seed: compile the spec, train ``steps`` steps on one fixed batch, and record for every
module call (each matrix-like weight op, each residual sum, the output; a weight used twice is two entries) the
RMS and mean |x| of its output and of the change since step 0. Per entry and step, the slope of log(value)
against log(width) is fitted. PASS when, for every entry and every step t ≥ 1, the change since init has slope
≈ 0 and no activation grows with width; a readout whose *initial* output shrinks with width is µP's
(logits Θ(1/√n) at init) and is reported, not failed. FAIL names the entries and steps that explode
(slope > 0, the SP symptom, at any step) or whose updates vanish (slope < 0, the NTK symptom) and still vanish at
the last step — an update that is o(1) at t = 1 and Θ(1) later is µP's lag (attention queries and keys with
non-zero init, whose gradient is uncorrelated at init) and is reported, not failed.

"≈ 0" means |slope| ≤ ``tolerance``, or within 3 standard errors of 0 across seeds, or a trend that does not
persist at the wide end (the slope over the widest three widths is within the tolerance): the verdict is about
the exponent, not about finite-width transients. The default tolerance, 0.25, was chosen from measured slopes
(docs/coordcheck.md): SP's and NTP's failing slopes are about ±0.5 and larger.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..compile import CompiledModel, compile_model, load_factory
from ..compile.errors import listed
from ..compile.init_record import preserved_rng
from ..compile.stacked import FlatStack
from ..spec import Spec, apply_overrides, load_spec
from ..train import ModuleReplica, Schedule, StackedReplicas, train
from ..train.losses import logits_of
from .taps import INPUT_PART, OWN_UPDATE, WEIGHT_PART, ModuleTaps, is_part, tap_points

DEFAULT_LR = {"sgd": 0.1, "adam": 0.005, "adamw": 0.005, "signsgd": 0.005, "lion": 0.005, "adafactor": 0.05,
              "adafactor_unscaled": 0.005,
              "muon": 0.005}
"""Learning rates large enough that SP's blow-up shows within 4 steps on the reference models (measured, see
docs/coordcheck.md); ``--set eta0=…`` overrides."""

DEFAULT_TOLERANCE = 0.25
DEFAULT_EXTEND = 1


@dataclass
class CoordResult:
    verdict: str
    spec: str
    model: str
    optimizer: str
    eta0: float
    widths: list[int]
    steps: int
    seeds: int
    tolerance: float
    records: list[dict[str, Any]]
    slopes: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    reports: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("verdict", "spec", "model", "optimizer", "eta0", "widths", "steps",
                                             "seeds", "tolerance", "failures", "reports", "slopes", "records")}

    def plot(self, path: str | os.PathLike) -> None:
        from .coord_plot import plot_coordcheck  # noqa: PLC0415 - matplotlib only when plotting

        plot_coordcheck(self, path)


def _batch(factory, data: str, batch_size: int):
    if data == "mnist1d":
        from ..data import mnist1d  # noqa: PLC0415

        x, y, _, _ = mnist1d(num_samples=max(2 * batch_size, 1000))
        return (x[:batch_size],), y[:batch_size]
    return factory.training_batch(batch_size)


def coordcheck(spec: Spec | str, model: str, *, widths: tuple[int, ...] = (64, 128, 256, 512), steps: int = 4,
               optimizer: str = "sgd", overrides: dict[str, Any] | None = None, seeds: int = 3,
               batch_size: int = 32, data: str = "example", base_width: int | None = None, depth: int | None = None,
               base_depth: int | None = None, tolerance: float = DEFAULT_TOLERANCE, first_seed: int = 0,
               progress: Callable[[str], None] | None = None, batched_seeds: bool | None = None,
               device: str | torch.device | None = None, extend: int = DEFAULT_EXTEND) -> CoordResult:
    """Run the coordinate check; see the module docstring for the verdict. ``eta0`` defaults to DEFAULT_LR.

    ``device``: where the models are built and trained (default: the CPU); the statistics of a run reach the
    host in one transfer.

    ``extend``: how many times a width twice the widest may be added when the widths cannot decide a PASS — an
    entry whose slope is beyond the tolerance but excused as noise or as a trend that flattens at the wide end
    (:func:`undecided`). A µP model stays flat there; NTP's vanishing updates on a BatchNorm ResNet plateau
    between widths 128 and 512 and fall beyond (docs/coordcheck.md).

    ``batched_seeds``: train the seeds of a width as one vmapped model (the same numbers, fewer kernel launches)
    where the model allows it — no buffers (BatchNorm), plain fx code; else, and on any failure, one by one.
    Default: on CUDA (1.3x faster on an H100), not on a CPU (the vmapped backward is slower there; both measured
    in docs/benchmarks.md)."""
    overrides = dict(overrides or {})
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    if "eta0" in spec.hypers and "eta0" not in overrides:
        overrides["eta0"] = DEFAULT_LR[optimizer]
    spec = apply_overrides(spec, overrides) if overrides else spec
    eta0 = float(spec.hypers["eta0"].value) if "eta0" in spec.hypers else float("nan")
    factory = load_factory(model)
    widths = tuple(sorted(widths))
    base_width = base_width or widths[0]
    device = _device(device)
    if batched_seeds is None:
        batched_seeds = device is not None and device.type == "cuda"
    with preserved_rng():      # the same batch every call; the caller's random state untouched
        torch.manual_seed(1234)
        inputs, targets = _batch(factory, data, batch_size)
    if device is not None:
        inputs = tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in inputs)
        targets = targets.to(device)
    seed_list = list(range(first_seed, first_seed + seeds))

    def run(w: int, why: str = "") -> list[dict[str, Any]]:
        if progress:
            progress(f"coordcheck {spec.name}: width {w}{why}, {seeds} seed{'s' * (seeds > 1)}")
        # trace and plan once per width; other seeds only re-draw the weights
        compiled = compile_model(spec, factory, width=w, base_width=base_width, depth=depth, base_depth=base_depth,
                                 optimizer=optimizer, seed=first_seed, device=device)
        taps = ModuleTaps(compiled.model, tap_points(compiled))
        try:
            together = batched_seeds and seeds > 1 and not compiled.plan.network.center \
                and not any(True for _ in compiled.model.named_buffers())
            if together:
                try:
                    return _train_together(compiled, taps, factory, seed_list, steps, inputs, targets, w)
                except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:  # vmap cannot run it
                    if progress:
                        progress(f"coordcheck {spec.name}: width {w}: seeds one at a time ({type(exc).__name__})")
                    compiled.reinitialize(first_seed, factory)
            out = []
            for seed in seed_list:
                if seed != first_seed:
                    compiled.reinitialize(seed, factory)
                out += _train_one(compiled, taps, seed, steps, inputs, targets, w)
            return out
        finally:
            taps.remove()

    records = [r for w in widths for r in run(w)]
    slopes = fit_slopes(records, widths, seeds)
    failures, reports = judge(slopes, tolerance, steps)
    for _ in range(extend):
        # a failure is decided already — unless three widths cannot tell a marginal slope from a transient
        doubtful = marginal(failures, tolerance, len(widths)) if failures else undecided(slopes, tolerance, steps)
        if not doubtful:
            break
        wider = 2 * widths[-1]
        reports.append(f"width {wider} added: the trend of {_names(doubtful)} was "
                       + (f"marginal over {len(widths)} widths" if failures else "too noisy or flattened at the widest widths")
                       + " to decide on")
        records += run(wider, f" (added: {_names(doubtful, 2)} undecided over widths {widths[0]}–{widths[-1]})")
        widths += (wider,)
        slopes = fit_slopes(records, widths, seeds)
        failures, more = judge(slopes, tolerance, steps)
        reports += more
    return CoordResult("FAIL" if failures else "PASS", spec.name, str(model), optimizer, eta0, list(widths), steps,
                       seeds, tolerance, records, slopes, failures, reports)


def _names(keys: list[str], most: int = 3) -> str:
    return listed(keys, most)


def _device(device: str | torch.device | None) -> torch.device | None:
    if device is None:
        return None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r}: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: CUDA is not available on this machine")
    if device.type == "meta":
        raise ValueError("device meta: a coordinate check trains the model; choose cpu or cuda")
    return device


class _Statistics:
    """The records of one run, fed the tapped values step by step (the seeds on each value's leading axis).

    RMS = ‖v‖₂/√n and mean |x| of each value and of its change since step 0. The values are kept and reduced
    together, every step of an entry in one batched op (per-step reductions were most of a narrow model's
    coordinate check), until they would hold more than ``budget`` bytes — then the steps kept so far are reduced
    and dropped, so a wide model needs no more memory than a few of its activations. All numbers of the run reach
    the host in one transfer."""

    NAMES = ("rms", "abs_mean", "delta_rms", "delta_abs")

    def __init__(self, width: int, seeds: list[int], budget: int = 256 * 2**20) -> None:
        self.width, self.seeds, self.budget = width, seeds, budget
        self.first: dict[str, torch.Tensor] = {}                 # step-0 value per entry, flattened
        self.pending: dict[str, list[torch.Tensor]] = {}
        self.reduced: dict[str, list[torch.Tensor]] = {}          # (steps, seeds, 4) blocks
        self.held = 0
        self.steps = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            if not value.is_floating_point():
                continue
            flat = _wide(value).flatten(1)
            if self.steps == 0:
                self.first[key] = flat
            self.pending.setdefault(key, []).append(flat)
            self.held += flat.numel() * flat.element_size()
        self.steps += 1
        if self.held > self.budget:
            self._reduce()

    def _reduce(self) -> None:
        with torch.no_grad():
            for key, values in self.pending.items():
                if not values:
                    continue
                x = torch.stack(values)  # (steps, seeds, n): a copy
                d = x - self.first[key]
                root_n = x.shape[2] ** 0.5
                rms = torch.linalg.vector_norm(x, dim=2) / root_n
                delta_rms = torch.linalg.vector_norm(d, dim=2) / root_n
                self.reduced.setdefault(key, []).append(
                    torch.stack([rms, x.abs_().mean(2), delta_rms, d.abs_().mean(2)], dim=2))
                values.clear()
        self.held = 0

    def records(self) -> list[dict[str, Any]]:
        self._reduce()
        keys = list(self.reduced)
        if not keys:
            return []
        # (entries, steps, seeds, statistics)
        numbers = torch.stack([torch.cat(self.reduced[k]) for k in keys]).double().tolist()
        return [{"width": self.width, "seed": seed, "step": step, "key": key,
                 **dict(zip(self.NAMES[: 4 if step else 2], numbers[i][step][j]))}
                for step in range(self.steps) for i, key in enumerate(keys) for j, seed in enumerate(self.seeds)]


def _wide(value: torch.Tensor) -> torch.Tensor:
    """Half precision summed in float32, where a sum of squares cannot overflow."""
    return value.detach().float() if value.element_size() < 4 else value.detach()


def _train(replicas: ModuleReplica | StackedReplicas, taps: ModuleTaps, seeds: list[int], steps: int, inputs,
           targets, width: int) -> list[dict[str, Any]]:
    """``steps`` steps of the plan's optimizer on the fixed batch (the seeds as the replicas' members), the tapped
    values of every forward — and of one more after the last step — fed to the statistics."""
    statistics = _Statistics(width, seeds)

    def forward(call, params, *x):
        out, values = taps.run(call, *x, params=params)
        return logits_of(out), values

    def record(step: int, outputs) -> None:
        logits, values = outputs
        # a recorded value can be a parameter (a module returning its table) that the optimizer updates in place
        statistics.add({key: value.detach().clone() if replicas.holds(value) else value.detach()
                        for key, value in {**values, "output": logits}.items()})

    train(replicas, lambda step: (inputs, targets, True), Schedule(steps), forward=forward, diverge_factor=None,
          on_outputs=record, final_outputs=True)
    return statistics.records()


def _train_one(compiled: CompiledModel, taps: ModuleTaps, seed: int, steps: int, inputs, targets, width: int
               ) -> list[dict[str, Any]]:
    taps.start()
    return _train(ModuleReplica(compiled), taps, [seed], steps, inputs, targets, width)


def _train_together(compiled: CompiledModel, taps: ModuleTaps, factory, seeds: list[int], steps: int, inputs,
                    targets, width: int) -> list[dict[str, Any]]:
    """The seeds of one width as one vmapped model on a (seeds, P) buffer, with the plan's optimizer applied to
    the whole buffer (:mod:`mupdsl.compile.stacked`): the records :func:`_train_one` would give, seed by seed."""
    stack = FlatStack.of(compiled)
    rows = []
    for seed in seeds:
        if seed != seeds[0]:
            compiled.reinitialize(seed, factory)
        rows.append(stack.flat([compiled]))
    replicas = StackedReplicas([compiled] * len(seeds), randomness="different", flat=torch.cat(rows))
    taps.split_readouts = False   # the step-0 tensors of a readout cannot be kept across vmapped calls
    try:
        with warnings.catch_warnings():
            # ops without a batching rule (fused attention on CPU) run member by member: correct, only slower
            warnings.filterwarnings("ignore", message="There is a performance drop")
            return _train(replicas, taps, seeds, steps, inputs, targets, width)
    finally:
        taps.split_readouts = True


def _slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slopes of each column of ``y`` (len(x), k) against ``x``: Σ(x−x̄)(y−ȳ) / Σ(x−x̄)²."""
    centred = x - x.mean()
    return centred @ (y - y.mean(axis=0)) / (centred @ centred)


def fit_slopes(records: list[dict[str, Any]], widths: tuple[int, ...], seeds: int) -> list[dict[str, Any]]:
    """Slope of log(value) vs log(width) per (key, step, quantity): of the seed-mean, with its standard error."""
    table: dict[tuple, dict[int, dict[int, float]]] = {}
    for r in records:
        for quantity in ("rms", "delta_rms"):
            if quantity in r:
                table.setdefault((r["key"], r["step"], quantity), {}).setdefault(r["width"], {})[r["seed"]] = r[quantity]
    seed_ids = sorted({r["seed"] for r in records})
    x = np.log(np.asarray(widths, dtype=float))
    out = []
    for (key, step, quantity), by_width in sorted(table.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        if len(by_width) != len(widths):
            continue
        matrix = np.asarray([[by_width[w].get(s, np.nan) for s in seed_ids] for w in widths])
        if not np.all(np.isfinite(matrix)):
            out.append({"key": key, "step": step, "quantity": quantity, "slope": math.inf, "tail_slope": math.inf,
                        "stderr": 0.0, "diverged": True})
            continue
        if np.any(matrix <= 1e-30):
            continue  # an exactly unchanged entry (frozen, or zero-initialised and not yet moved)
        mean = np.log(matrix.mean(axis=1))
        slope = float(_slopes(x, mean))
        tail = float(_slopes(x[-3:], mean[-3:])) if len(widths) >= 4 else slope
        per_seed = _slopes(x, np.log(matrix))
        stderr = float(np.std(per_seed, ddof=1) / math.sqrt(seeds)) if seeds > 1 else 0.0
        out.append({"key": key, "step": step, "quantity": quantity, "slope": slope, "tail_slope": tail,
                    "stderr": stderr, "diverged": False})
    return out


def _significant(s: dict[str, Any], tolerance: float) -> bool:
    """A trend that holds over all widths and over the widest three: a slope that flattens towards the wide end is
    a finite-width transient (e.g. attention at the base width), not a wrong exponent."""
    slope = s["slope"]
    return (abs(slope) > tolerance and abs(slope) > 3 * s["stderr"]
            and abs(s["tail_slope"]) > tolerance and np.sign(s["tail_slope"]) == np.sign(slope))


def judge(slopes: list[dict[str, Any]], tolerance: float, steps: int) -> tuple[list[dict], list[str]]:
    """Failures (explosions at any step; vanishing updates that still vanish at the last step) and reports.

    A readout whose change vanishes while its own update ``(W_t − W₀)x_t`` is width-stable vanishes through
    ``W₀Δx``, µP's Θ(1/√n) term (:mod:`~mupdsl.measure.taps`): a finite-width transient, reported and not failed —
    the model's output with it when it is that readout's output."""
    failures, reports = [], []
    lagging: set[str] = set()
    parts = {(s["key"], s["step"]): s for s in slopes if is_part(s["key"]) and s["quantity"] == "delta_rms"}
    for s in slopes:
        if is_part(s["key"]):
            continue
        slope, step, quantity = s["slope"], s["step"], s["quantity"]
        significant = _significant(s, tolerance)
        if s["diverged"]:
            failures.append({**s, "symptom": "explode", "why": "non-finite values (diverged)"})
        elif quantity == "rms" and slope > 0 and significant:
            what = "activation grows with width" + (" at init" if step == 0 else "")
            failures.append({**s, "symptom": "explode", "why": what})
        elif quantity == "rms" and step == 0 and slope < -tolerance and s["key"] == "output":
            reports.append(f"output at init shrinks with width (slope {slope:+.2f}), as µP's readout does (Θ(1/√n) "
                           "logits at init): reported, not failed")
        elif quantity == "delta_rms" and significant and slope > 0:
            failures.append({**s, "symptom": "explode", "why": "update grows with width"})
        elif quantity == "delta_rms" and significant and step == steps:
            failures.append({**s, "symptom": "vanish", "why": "update vanishes with width"})
        elif quantity == "delta_rms" and significant:
            lagging.add(s["key"])
    reports += _hidden_vanishing_updates(slopes, failures, tolerance, steps)
    caught_up = sorted(lagging - {f["key"] for f in failures})
    if caught_up:
        reports.append("updates that vanish with width at first but not by the last step (µP's lag, e.g. "
                       f"attention queries/keys, whose gradient needs a step of correlation): {', '.join(caught_up)}")
    return _excuse_readout_transients(failures, reports, parts, tolerance)


def _hidden_vanishing_updates(slopes: list[dict], failures: list[dict], tolerance: float, steps: int
                              ) -> list[str]:
    """Reports of the layers whose own update ``(W_t − W₀)x_t`` (:data:`~mupdsl.measure.taps.OWN_UPDATE`) still
    vanishes with width at the last step while their change since init does not fail: the change is their
    input's, carried through. A learning-rate exponent too small for the layer looks like this, and so do µP's
    own updates on third-party models at small widths (slopes down to −0.46 over the zoo's test widths,
    docs/coordcheck.md), so it is reported, not failed."""
    failed = {(f["key"], f["step"]) for f in failures}
    out = []
    for s in slopes:
        if not s["key"].endswith(OWN_UPDATE) or s["quantity"] != "delta_rms" or s["step"] != steps:
            continue
        if s["diverged"] or s["slope"] >= 0 or not _significant(s, tolerance):
            continue
        layer = s["key"][:-len(OWN_UPDATE)]
        if (layer, steps) in failed:
            continue
        out.append(f"{layer} t={steps}: its own update (W_t − W₀)·x vanishes with width (slope {s['slope']:+.2f}, "
                   f"{s['tail_slope']:+.2f} over the widest three) while its change since init does not: the change "
                   "is its input's, carried through. A learning-rate exponent too small for this layer looks like "
                   "this; so do µP's own updates at small widths on some models: check the layer's rule")
    return out


def _excuse_readout_transients(failures: list[dict], reports: list[str], parts: dict, tolerance: float
                               ) -> tuple[list[dict], list[str]]:
    excused: list[dict] = []
    for f in failures:
        own = parts.get((f["key"] + WEIGHT_PART, f["step"]))
        through = parts.get((f["key"] + INPUT_PART, f["step"]))
        if f["symptom"] != "vanish" or own is None or through is None or own["diverged"]:
            continue
        if not _significant(own, tolerance) and through["slope"] < -tolerance:
            excused.append(f)
            reports.append(
                f"{f['key']} t={f['step']}: its change vanishes with width (slope {f['slope']:+.2f}) only through "
                f"W₀·Δx (slope {through['slope']:+.2f}), the Θ(1/√n) part of a readout's change; its own update "
                f"(W_t − W₀)·x does not vanish beyond the tolerance (slope {own['slope']:+.2f}, "
                f"{own['tail_slope']:+.2f} over the widest three): µP's finite-width transient, not the plan — "
                "reported, not failed (at larger widths the Θ(1) part dominates)")
    kept = []
    for f in failures:
        if any(f is e for e in excused):
            continue
        # the model's output, when it is an excused readout's output at the same step (the same slope)
        readout = next((e for e in excused if e["step"] == f["step"] and abs(f["slope"] - e["slope"]) <= 0.05),
                       None)
        if readout is not None and f["key"] == "output" and f["symptom"] == "vanish":
            reports.append(f"output t={f['step']}: the change of {readout['key']}, its readout (above)")
            continue
        kept.append(f)
    return kept, reports


def marginal(failures: list[dict[str, Any]], tolerance: float, n_widths: int, margin: float = 2.0) -> list[str]:
    """With two or three widths no slope over the widest three can tell a trend that persists from one that
    flattens (µP's finite-width transients: BERT, MLP-Mixer, ConvNeXt at widths 64–256 show slopes of −0.27 to −0.34
    that vanish with a fourth width; the reference MLP's first hidden layer at init, +0.29 from width 32 to 64
    and flat from 64 on). Failures that are all within ``margin`` × the tolerance, none diverged, are undecided
    there: the keys, else []."""
    if n_widths not in (2, 3) or not failures:   # four widths have a tail slope
        return []
    if any(f["diverged"] or abs(f["slope"]) > margin * tolerance for f in failures):
        return []
    return list(dict.fromkeys(f["key"] for f in failures))


def undecided(slopes: list[dict[str, Any]], tolerance: float, steps: int) -> list[str]:
    """Entries the verdict excused though their slope is beyond ``tolerance``: not significant across seeds, or
    not holding over the widest three widths — where more width would tell (explosions at any step, vanishing
    updates at the last)."""
    keys: list[str] = []
    for s in slopes:
        if s["diverged"] or abs(s["slope"]) <= tolerance or s["key"] in keys or is_part(s["key"]):
            continue
        if s["quantity"] == "rms" and (s["slope"] < 0 or s["key"] == "output" and s["step"] == 0):
            continue  # shrinking activations, and µP's readout at init, are not failures
        if s["quantity"] == "delta_rms" and s["slope"] < 0 and s["step"] != steps:
            continue  # a lag, as long as the last step is fine
        failed = judge([s], tolerance, steps)[0]
        if not failed:
            keys.append(s["key"])
    return keys
