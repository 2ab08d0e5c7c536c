"""The sweep pipeline (design.md §5): gate every spec with a coordinate check, plan every trial with a
deterministic id, run what is not in the store yet (resume = plan − done), store each finished trial at once.

Trials of one shape (spec, width, γ) are trained together as one vmapped model (:mod:`.grouped`), falling back
to one at a time where vmap cannot apply; or on Slurm / Ray (:mod:`.engines`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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
from ..measure.sharpness import SharpnessResult, SharpnessTracker, eos_threshold, preconditioner
from ..spec import load_spec
from .experiment import Experiment, Measure
from .store import Store

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
    return dict(tol=m.tol, top_k=m.top_k, loss=loss, trace_samples=m.trace_samples, directional=m.directional)


def record_measurement(curves: dict[str, list], step: int, result: SharpnessResult, ntk: float | None) -> None:
    """Append one measurement to a trial's curves (the optional ones only when measured)."""
    curves["sharp_step"].append(step)
    curves["sharpness"].append(result.sharpness)
    curves["hvps"].append(result.hvps)
    extras = {"trace": result.trace, "trace_stderr": result.trace_stderr, "directional": result.directional,
              "ntk": ntk}
    for key, value in extras.items():
        if value is not None:
            curves.setdefault(key, []).append(value)


def plan_trials(exp: Experiment) -> list[dict[str, Any]]:
    """Every (spec, width, lr, seed, gamma) with a deterministic id (a hash of everything that shapes its result)."""
    trials = []
    gammas = exp.gammas or [None]
    for spec in exp.specs:
        for width, depth in [(w, d) for w in exp.widths for d in exp.depth_values()]:
            for lr in exp.lr_values():
                for seed in exp.seeds:
                    for gamma in gammas:
                        base_depth = exp.base_depth or (min(exp.depths) if exp.depths else exp.depth)
                        key = dict(spec=spec, model=exp.model, dataset=exp.dataset, width=width,
                                   base_width=exp.base_width or exp.widths[0], depth=depth,
                                   base_depth=base_depth, optimizer=exp.optimizer, lr=lr, seed=seed, gamma=gamma,
                                   gamma_name=exp.gamma_name, steps=exp.steps, batch_size=exp.batch_size,
                                   warmup=exp.warmup, dtype=exp.dtype, measure=exp.measure.model_dump(),
                                   num_samples=exp.num_samples)
                        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
                        trials.append({"id": digest, **key})
    return trials


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


def _gate_gamma(gammas: list[float]) -> float:
    """The γ a γ-sweep is gated at: 1 (the feature-learning scale of µP) when swept, else the middle value."""
    return 1.0 if 1.0 in gammas else sorted(gammas)[len(gammas) // 2]


def gate(exp: Experiment, store: Store, say: Callable[[str], None]) -> dict[str, str]:
    """Coordinate-check every spec (results kept in the store); returns the failing gated specs."""
    done = store.gates()
    failures = {}
    widths = tuple(exp.coordcheck_widths or exp.widths[:4])
    if len(widths) < 2:
        widths = (widths[0], 2 * widths[0])
    for spec in exp.specs:
        if spec not in done:
            result = coordcheck(spec, exp.model, widths=widths, optimizer=exp.optimizer, seeds=2,
                                depth=exp.depth, base_depth=exp.base_depth, device=_device(exp),
                                data="mnist1d" if exp.dataset == "mnist1d" else "example",
                                overrides={exp.gamma_name: _gate_gamma(exp.gammas)} if exp.gammas else None)
            detail = "; ".join(f"{f['key']} t={f['step']} {f['symptom']} ({f['slope']:+.2f})"
                               for f in result.failures[:5])
            store.record_gate(spec, result.verdict, detail)
            done[spec] = (result.verdict, detail)
        verdict, detail = done[spec]
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
    measure_batch = Batch((x_train[: m.batch_size],), y_train[: m.batch_size])
    tracker = SharpnessTracker(**measure_options(m, exp.loss))
    curves: dict[str, list] = {k: [] for k in ("loss", "eval_step", "eval_loss", "sharp_step", "sharpness", "hvps")}
    status, first = "done", None
    for step in range(exp.steps):
        if exp.warmup:
            for group, lr in zip(opt.param_groups, base_lrs):
                group["lr"] = lr * min(1.0, (step + 1) / exp.warmup)
        if m.sharpness_every and step % m.sharpness_every == 0:
            scale = preconditioner(model, names, lrs, trial["lr"], opt if exp.optimizer != "sgd" else None,
                                   exp.optimizer) if (exp.optimizer == "sgd" or step > 0) else None
            if scale is not None:
                r = tracker(model, measure_batch, scale=scale, names=names)
                ntk = ntk_eigenvalues(model, measure_batch, names, scale)[0] if m.ntk else None
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
    done = {t["id"]: t for t in store.trials()}
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
    """Run (or resume) the sweep into ``out_dir`` on ``engine``: "local", "slurm" (submitit) or "ray"."""
    import shutil  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    out = Path(out_dir)
    if fresh and out.exists():
        shutil.rmtree(out)
    store = Store(out)
    (out / "experiment.json").write_text(exp.model_dump_json(indent=1))
    load_factory(exp.model)  # a bad model or a missing dataset fails here, before any work
    data = _data(exp)
    failures = gate(exp, store, say)
    if failures and gated:
        store.close()
        raise GateFailed(failures)
    trials = plan_trials(exp)
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
    return ran, diverged, crashed
