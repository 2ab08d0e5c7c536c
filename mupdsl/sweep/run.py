"""The sweep pipeline (design.md §5): gate every spec with a coordinate check, plan every trial with a
deterministic id, run what is not in the store yet (resume = plan − done), store each finished trial at once.

Trials of one shape (spec, width, γ) are trained together as one vmapped model (:mod:`.grouped`), falling back
to one at a time where vmap cannot apply; or on Slurm / Ray (:mod:`.engines`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..compile import compile_model, load_factory
from ..measure import coordcheck
from ..measure.hvp import Batch
from ..measure.losses import task_loss
from ..measure.ntk import ntk_eigenvalues
from ..measure.sharpness import (
    SharpnessResult, SharpnessTracker, adam_moments, adam_preconditioner, eos_threshold, floor_warning,
)
from ..spec import load_spec
from .experiment import Experiment, Measure
from .keys import gate_keys, gate_options, plan_trials
from .store import Store
from .workdir import folder_lock, open_folder

DIVERGED_FACTOR = 1e3
"""A loss this many times the initial one (or non-finite) ends a trial as diverged."""


class GateFailed(Exception):
    def __init__(self, failures: dict[str, str]) -> None:
        super().__init__("; ".join(f"{s}: {d}" for s, d in failures.items()))
        self.failures = failures


@dataclass
class SweepSummary:
    trials: int
    ran: int
    skipped: int
    diverged: int
    crashed: int


def measure_options(m: Measure, loss: str) -> dict[str, Any]:
    """The sharpness tracker's arguments from an experiment's ``[measure]`` table."""
    options = dict(tol=m.tol, top_k=m.top_k, loss=loss, trace_samples=m.trace_samples, directional=m.directional,
                   preconditioner=m.preconditioner, floor_warn=m.floor_warn)
    if m.batch == "full":
        options["micro_batch"] = m.batch_size
    return options


MEASURE_SEED = 0x5EED
"""The seed of the measurement batches' own generator: every trial of a sweep (and every member of a group) is
measured on the same sequence of batches, and measuring never changes the batches a trial trains on."""


def measurement_batch(m: Measure, x_train: torch.Tensor, y_train: torch.Tensor, generator: torch.Generator,
                      fixed: Batch | None = None) -> Batch:
    """The batch of one measurement (see ``Measure.batch``): ``fixed`` is drawn once from ``generator`` and then
    passed back as ``fixed``; ``train`` draws ``batch_size`` indices uniformly with replacement, as the training
    batches are drawn; ``full`` is the whole training set."""
    if m.batch == "full":
        return Batch((x_train,), y_train)
    if m.batch == "fixed" and fixed is not None:
        return fixed
    idx = torch.randint(0, len(y_train), (m.batch_size,), generator=generator).to(y_train.device)
    return Batch((x_train[idx],), y_train[idx])


def floor_notice(trial: dict[str, Any], curves: dict, threshold: float) -> str | None:
    """A warning naming the largest ε-floor share of a trial's Adam measurements, when it exceeds ``threshold``."""
    shares = np.asarray(curves.get("floor_share", []), dtype=float)
    if not shares.size or not np.nanmax(shares) > threshold:
        return None
    worst = int(np.nanargmax(shares))
    steps = np.asarray(curves.get("sharp_step", []))
    step = int(steps[worst]) if steps.size == shares.size else worst
    return (f"warning: {trial['spec']} width {trial['width']} lr {trial['lr']:.4g}, step {step}: "
            + floor_warning(float(shares[worst]), 0.0)
            + f" ({int((shares > threshold).sum())} of {shares.size} measurements above {threshold:.0%})")


def record_measurement(curves: dict[str, list], step: int, result: SharpnessResult, ntk: float | None) -> None:
    """Append one measurement to a trial's curves (the optional ones only when measured)."""
    curves["sharp_step"].append(step)
    curves["sharpness"].append(result.sharpness)
    curves["hvps"].append(result.hvps)
    extras = {"trace": result.trace, "trace_stderr": result.trace_stderr, "directional": result.directional,
              "ntk": ntk, "floor_share": result.floor_share}
    for key, value in extras.items():
        if value is not None:
            curves.setdefault(key, []).append(value)


def _data(exp: Experiment):
    if exp.dataset == "cifar10":
        from ..data.cifar10 import cifar10, tensors  # noqa: PLC0415

        v = exp.data_verify
        x, y = tensors(cifar10(exp.data_root, train=True, augment=False, verify=v), limit=exp.num_samples)
        xt, yt = tensors(cifar10(exp.data_root, train=False, augment=False, verify=v),
                         limit=max(exp.num_samples // 5, 1))
        return x, y, xt, yt
    if exp.dataset == "text":
        from ..data import DataMissing, char_dataset  # noqa: PLC0415

        try:
            x, y, _ = char_dataset(exp.text_file, exp.context, limit=exp.num_samples)
        except FileNotFoundError:
            raise DataMissing(f"text file not found: {exp.text_file} (set text_file in the experiment to a local "
                              "UTF-8 file; nothing is downloaded)") from None
        cut = int(0.9 * len(y))  # the last tenth of the text, unseen in training, for evaluation
        return x[:cut], y[:cut], x[cut:], y[cut:]
    if exp.dataset == "linear":
        from ..data import linear_task  # noqa: PLC0415

        X, Y, _ = linear_task(exp.input_dim)
        return X, Y, X, Y
    if exp.dataset == "mnist1d":
        from ..data import mnist1d  # noqa: PLC0415

        return mnist1d(num_samples=exp.num_samples)
    from ..data import teacher  # noqa: PLC0415

    x, y = teacher(exp.num_samples)
    cut = int(0.8 * len(y))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def _device(exp: Experiment) -> torch.device:
    if exp.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(exp.device)


def on_device(data, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_test, y_test) moved once to the device, floating inputs in ``dtype``: minibatches
    are then gathered there instead of being copied over every step."""
    def move(t: torch.Tensor, is_input: bool) -> torch.Tensor:
        return t.to(device, dtype) if is_input and t.is_floating_point() else t.to(device)

    return tuple(move(t, i % 2 == 0) for i, t in enumerate(data))


@contextlib.contextmanager
def pinned_threads(count: int | None) -> Iterator[int]:
    """torch's intra-op threads set to ``count`` (default: the cores of this process's CPU affinity) for the
    block, restored after."""
    previous = torch.get_num_threads()
    if count is None:
        count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)


def gate(exp: Experiment, store: Store, say: Callable[[str], None],
         keys: dict[str, str] | None = None) -> dict[str, str]:
    """Coordinate-check every spec (verdicts kept in the store under a content key: an edited spec or model is
    checked again); returns the failing gated specs."""
    keys = keys or gate_keys(exp)
    failures = {}
    for spec in exp.specs:
        found = store.gate(keys[spec])
        if found is None:
            result = coordcheck(spec, exp.model, device=_device(exp), **gate_options(exp))
            detail = "; ".join(f"{f['key']} t={f['step']} {f['symptom']} ({f['slope']:+.2f})"
                               for f in result.failures[:5])
            store.record_gate(keys[spec], spec, result.verdict, detail)
            found = (result.verdict, detail)
        verdict, detail = found
        say(f"coordcheck {spec}: {verdict}" + (f" — {detail}" if detail else "")
            + (" (ungated)" if spec in exp.ungated else ""))
        if verdict != "PASS" and spec not in exp.ungated:
            failures[spec] = detail
    return failures


def run_trial(exp: Experiment, trial: dict[str, Any], data, device: torch.device) -> tuple[str, dict, float, float]:
    """Train one trial; returns (status, curves, final train loss, final eval loss)."""
    overrides = {"eta0": trial["lr"]}
    if trial["gamma"] is not None:
        overrides[trial["gamma_name"]] = trial["gamma"]
    dtype = torch.float64 if exp.dtype == "float64" else torch.float32
    x_train, y_train, x_test, y_test = on_device(data, device, dtype)
    spec = load_spec(trial["spec"], overrides)
    compiled = compile_model(spec, exp.model, width=trial["width"], base_width=trial["base_width"],
                             depth=trial["depth"], base_depth=trial["base_depth"], optimizer=exp.optimizer,
                             seed=trial["seed"])
    model = compiled.model.to(device=device, dtype=dtype)
    opt = compiled.optimizer()
    base_lrs = [g["lr"] for g in opt.param_groups]
    names = [t.name for t in compiled.plan.tensors]
    lrs = {name: lr for name, (lr, _, _) in compiled.settings().items()}
    g = torch.Generator().manual_seed(trial["seed"])
    m = exp.measure
    measure_rng = torch.Generator().manual_seed(MEASURE_SEED)
    fixed = measurement_batch(m, x_train, y_train, measure_rng) if m.batch == "fixed" else None
    tracker = SharpnessTracker(**measure_options(m, exp.loss))
    curves: dict[str, list] = {k: [] for k in ("loss", "eval_step", "eval_loss", "sharp_step", "sharpness", "hvps")}
    adam = exp.optimizer != "sgd"
    root, _ = adam_preconditioner(model, names, lrs, trial["lr"])   # (lr_p / eta0)^{1/2}: SGD's S, Adam's D^{1/2}
    status, first = "done", None
    for step in range(exp.steps):
        if exp.warmup:
            for group, lr in zip(opt.param_groups, base_lrs):
                group["lr"] = lr * min(1.0, (step + 1) / exp.warmup)
        if m.sharpness_every and step % m.sharpness_every == 0 and (not adam or step > 0):
            batch = measurement_batch(m, x_train, y_train, measure_rng, fixed)
            if adam:
                r = tracker(model, batch, adam=adam_moments(model, names, opt), ratio=root.square(), names=names)
            else:
                r = tracker(model, batch, scale=root, names=names)
            ntk = ntk_eigenvalues(model, batch, names, r.scale)[0] if m.ntk else None
            record_measurement(curves, step, r, ntk)
        idx = torch.arange(len(y_train)) if exp.full_batch else torch.randint(0, len(y_train), (exp.batch_size,),
                                                                                 generator=g)
        idx = idx.to(device)
        loss = task_loss(model(x_train[idx]), y_train[idx], exp.loss)
        value = loss.item()
        curves["loss"].append(value)
        first = value if first is None else first
        if not math.isfinite(value) or value > DIVERGED_FACTOR * max(first, 1e-8):
            status = "diverged"
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % m.eval_every == 0 or step + 1 == exp.steps:
            with torch.no_grad():
                curves["eval_step"].append(step + 1)
                curves["eval_loss"].append(task_loss(model(x_test), y_test,
                                                     exp.loss).item())
    tail = curves["loss"][-max(1, exp.steps // 10):]
    final = float(np.mean(tail)) if status == "done" else math.inf
    final_eval = curves["eval_loss"][-1] if curves["eval_loss"] and status == "done" else math.inf
    arrays = {k: np.asarray(v, dtype=float) for k, v in curves.items()}
    arrays["eos"] = np.asarray([eos_threshold(exp.optimizer, trial["lr"])])
    return status, arrays, final, final_eval


def _run_members(exp: Experiment, members: list[dict[str, Any]], data, device: torch.device,
                 say: Callable[[str], None]) -> list[tuple]:
    """(status, curves, final, final_eval, error, seconds) per trial: grouped where possible, else one at a time."""
    from .grouped import compile_member, groupable, run_group  # noqa: PLC0415

    if exp.group and len(members) > 1:
        start = time.perf_counter()
        try:
            compiled = [compile_member(exp, t) for t in members]
            if all(groupable(c) for c in compiled):
                results = run_group(exp, members, data, device, compiled)
                each = (time.perf_counter() - start) / len(members)
                return [(s, c, f, e, None, each) for s, c, f, e in results]
            say(f"notice: {members[0]['spec']} width {members[0]['width']}: the model has buffers (BatchNorm); "
                "its trials run one at a time")
        except Exception as exc:  # noqa: BLE001 - fall back, the single path records real crashes
            say(f"notice: grouping failed ({type(exc).__name__}: {exc}); running one at a time")
    out = []
    for trial in members:
        start = time.perf_counter()
        try:
            status, curves, final, final_eval = run_trial(exp, trial, data, device)
            error = None
        except Exception as exc:  # noqa: BLE001 - a crashed trial is a result; the sweep goes on
            status, curves, final, final_eval = "crashed", {}, None, None
            error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
        out.append((status, curves, final, final_eval, error, time.perf_counter() - start))
    return out


def converged(status: str, curves: dict) -> bool:
    """A trial that finished with a lower loss than it started with."""
    loss = curves.get("loss", [])
    return status == "done" and len(loss) > 1 and float(np.mean(loss[-max(1, len(loss) // 10):])) < loss[0]


def _run_adaptive(exp: Experiment, members: list[dict[str, Any]], data, device, store: Store,
                  say: Callable[[str], None]) -> tuple[list[tuple], list[dict[str, Any]]]:
    """Seed 003's adaptive grid, per seed: η downward from the largest until the first convergent trial, then
    ``below`` more; trials already in the store count (resume) and are not re-run."""
    finished = store.done_ids()
    done = {t["id"]: t for t in store.trials() if t["id"] in finished}
    outcomes, ran = [], []
    for seed in sorted({t["seed"] for t in members}):
        ladder = sorted((t for t in members if t["seed"] == seed), key=lambda t: -t["lr"])
        remaining = None
        for trial in ladder:
            if remaining == 0:
                break
            if trial["id"] in done:
                ok = done[trial["id"]]["status"] == "done" and converged("done", store.curves(trial["id"]))
            else:
                (result,) = _run_members(exp, [trial], data, device, say)
                outcomes.append(result)
                ran.append(trial)
                ok = converged(result[0], result[1])
            if remaining is not None:
                remaining -= 1
            elif ok:
                remaining = exp.lrs.below
    return outcomes, ran


def run(exp: Experiment, out_dir, *, gated: bool = True, fresh: bool = False, engine: str = "local",
        engine_options: dict[str, Any] | None = None, say: Callable[[str], None] = print) -> SweepSummary:
    """Run (or resume) the sweep into ``out_dir`` on ``engine``: "local", "slurm" (submitit) or "ray".

    The folder is locked for the run (a second sweep into it is refused with this one's pid) and holds one
    experiment (another one is refused); ``fresh`` deletes the sweep's own files there, once the inputs validated.
    """
    from .engines import EngineRefused, engine_problem  # noqa: PLC0415

    problem = engine_problem(exp, engine)
    if problem is not None:
        raise EngineRefused(problem)
    with folder_lock(out_dir):
        return _run(exp, out_dir, gated=gated, fresh=fresh, engine=engine, engine_options=engine_options, say=say)


def _run(exp: Experiment, out_dir, *, gated: bool, fresh: bool, engine: str, engine_options: dict[str, Any] | None,
         say: Callable[[str], None]) -> SweepSummary:
    from pathlib import Path  # noqa: PLC0415

    out = Path(out_dir)
    load_factory(exp.model)  # a bad model, spec or a missing dataset fails here, before any work
    data = _data(exp)
    trials, keys = plan_trials(exp), gate_keys(exp)
    store = open_folder(out, exp, fresh=fresh)
    store.set_current([t["id"] for t in trials], keys.values())
    failures = gate(exp, store, say, keys)
    if failures and gated:
        store.close()
        raise GateFailed(failures)
    done = store.done_ids()
    todo = [t for t in trials if t["id"] not in done]
    if exp.adaptive:
        say(f"adaptive learning-rate search: up to {len(trials)} trials, {len(trials) - len(todo)} already done")
        todo = trials  # the search decides what runs; finished trials are read back, not re-run
    else:
        say(f"{len(trials)} trials planned, {len(trials) - len(todo)} already done, {len(todo)} to run")
    device = _device(exp)
    ran = diverged = crashed = 0
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for trial in todo:
        groups.setdefault((trial["spec"], trial["width"], trial["depth"], trial["gamma"]), []).append(trial)
    if engine in ("slurm", "ray") and not exp.adaptive:
        from .engines import run_ray, run_slurm  # noqa: PLC0415

        runner = run_slurm if engine == "slurm" else run_ray
        extra = {"out": out} if engine == "slurm" else {}
        runner(exp, list(groups.values()), store=store, say=say, **extra, **(engine_options or {}))
        status = {t["id"]: t["status"] for t in store.trials()}
        ran = sum(t["id"] in status for t in todo)
        summary = SweepSummary(len(trials), ran, len(trials) - len(todo),
                               sum(status.get(t["id"]) == "diverged" for t in todo),
                               sum(status.get(t["id"]) == "crashed" for t in todo))
        store.close()
        return summary
    with pinned_threads(exp.threads):
        ran, diverged, crashed = _run_local(exp, groups, data, device, store, say, len(todo))
    store.close()
    skipped = len(done & {t["id"] for t in trials})
    return SweepSummary(len(trials) if not exp.adaptive else ran + skipped, ran, skipped, diverged, crashed)


def _run_local(exp: Experiment, groups: dict[tuple, list[dict[str, Any]]], data, device, store: Store,
               say: Callable[[str], None], total: int) -> tuple[int, int, int]:
    """The local engine: group after group in this process, each trial stored at once; (ran, diverged, crashed)."""
    ran = diverged = crashed = 0
    for members in groups.values():
        if exp.adaptive:
            outcomes, members = _run_adaptive(exp, members, data, device, store, say)
        else:
            outcomes = _run_members(exp, members, data, device, say)
        for trial, (status, curves, final, final_eval, error, seconds) in zip(members, outcomes):
            store.record(trial, status, curves, final_loss=final, final_eval=final_eval, error=error,
                         seconds=seconds)
            ran += 1
            diverged += status == "diverged"
            crashed += status == "crashed"
            depth = f" depth {trial['depth']}" if trial["depth"] is not None else ""
            say(f"[{ran}/{total}] {trial['spec']} width {trial['width']}{depth} lr {trial['lr']:.4g} seed {trial['seed']}"
                f": {status}" + (f", loss {final:.4f}" if status == "done" else "") + f" ({seconds:.2f} s)")
            notice = floor_notice(trial, curves or {}, exp.measure.floor_warn)
            if notice:
                say(notice)
    return ran, diverged, crashed
