"""The sweep pipeline (design.md §5): gate every spec with a coordinate check, plan every trial with a
deterministic id, run what is not in the store yet (resume = plan − done), store each finished trial at once.

Trials of one shape (spec, width, γ) are trained together as one vmapped model (:mod:`.trial`), falling back
to one at a time where vmap cannot apply; or on Slurm / Ray (:mod:`.engines`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..compile import CompileError, load_factory
from ..measure import coordcheck
from .engines import EngineRefused, engine_problem, run_ray, run_slurm
from .experiment import Experiment
from .keys import gate_keys, gate_options, plan_trials
from .measuring import floor_notice
from .store import Store
from .trial import converged, experiment_data, experiment_device, iter_members, pinned_threads, spec_error
from .workdir import folder_lock, open_folder


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


def gate(exp: Experiment, store: Store, say: Callable[[str], None],
         keys: dict[str, str] | None = None) -> dict[str, str]:
    """Coordinate-check every spec (verdicts kept in the store under a content key: an edited spec or model is
    checked again); returns the failing gated specs."""
    keys = keys or gate_keys(exp)
    failures = {}
    for spec in exp.specs:
        found = store.gate(keys[spec])
        if found is None:
            try:
                result = coordcheck(spec, exp.model, device=experiment_device(exp), **gate_options(exp))
            except CompileError as exc:
                raise spec_error(exp, spec, exc) from None
            detail = "; ".join(f"{f['key']} t={f['step']} "
                               f"{'update' if f['quantity'] == 'delta_rms' else 'activation'} {f['symptom']} "
                               f"({f['slope']:+.2f})"
                               for f in result.failures[:5])
            store.record_gate(keys[spec], spec, result.verdict, detail)
            found = (result.verdict, detail)
        verdict, detail = found
        say(f"coordcheck {spec}: {verdict}" + (f" — {detail}" if detail else "")
            + (" (ungated)" if spec in exp.ungated else ""))
        if verdict != "PASS" and spec not in exp.ungated:
            failures[spec] = detail
    return failures


def _run_adaptive(exp: Experiment, members: list[dict[str, Any]], data, device, store: Store,
                  say: Callable[[str], None], record: Callable[[dict[str, Any], tuple], None]) -> None:
    """Seed 003's adaptive grid, per seed: η downward from the largest until the first convergent trial, then
    ``below`` more; trials already in the store count (resume) and are not re-run; each trial run is handed to
    ``record`` as soon as it finishes."""
    finished = store.done_ids()
    done = {t["id"]: t for t in store.trials() if t["id"] in finished}
    for seed in sorted({t["seed"] for t in members}):
        ladder = sorted((t for t in members if t["seed"] == seed), key=lambda t: -t["lr"])
        remaining = None
        for trial in ladder:
            if remaining == 0:
                break
            if trial["id"] in done:
                ok = done[trial["id"]]["status"] == "done" and converged("done", store.curves(trial["id"]))
            else:
                ((_, result),) = iter_members(exp, [trial], data, device, say)
                record(trial, result)
                ok = converged(result[0], result[1])
            if remaining is not None:
                remaining -= 1
            elif ok:
                remaining = exp.lrs.below


def run(exp: Experiment, out_dir, *, gated: bool = True, fresh: bool = False, engine: str = "local",
        engine_options: dict[str, Any] | None = None, say: Callable[[str], None] = print) -> SweepSummary:
    """Run (or resume) the sweep into ``out_dir`` on ``engine``: "local", "slurm" (submitit) or "ray".

    The folder is locked for the run (a second sweep into it is refused with this one's pid) and holds one
    experiment (another one is refused); ``fresh`` deletes the sweep's own files there, once the inputs validated.
    """
    problem = engine_problem(exp, engine)
    if problem is not None:
        raise EngineRefused(problem)
    with folder_lock(out_dir):
        return _run(exp, out_dir, gated=gated, fresh=fresh, engine=engine, engine_options=engine_options, say=say)


def _run(exp: Experiment, out_dir, *, gated: bool, fresh: bool, engine: str, engine_options: dict[str, Any] | None,
         say: Callable[[str], None]) -> SweepSummary:
    out = Path(out_dir)
    load_factory(exp.model)  # a bad model, spec or a missing dataset fails here, before any work
    data = experiment_data(exp)
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
    device = experiment_device(exp)
    ran = diverged = crashed = 0
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for trial in todo:
        groups.setdefault((trial["spec"], trial["width"], trial["depth"], trial["gamma"]), []).append(trial)
    if engine in ("slurm", "ray") and not exp.adaptive:
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
    """The local engine: group after group in this process, each trial stored as soon as it finishes;
    (ran, diverged, crashed)."""
    counts = {"ran": 0, "diverged": 0, "crashed": 0}

    def record(trial: dict[str, Any], outcome: tuple) -> None:
        status, curves, final, final_eval, error, seconds = outcome
        store.record(trial, status, curves, final_loss=final, final_eval=final_eval, error=error, seconds=seconds)
        counts["ran"] += 1
        counts["diverged"] += status == "diverged"
        counts["crashed"] += status == "crashed"
        depth = f" depth {trial['depth']}" if trial["depth"] is not None else ""
        say(f"[{counts['ran']}/{total}] {trial['spec']} width {trial['width']}{depth} lr {trial['lr']:.4g} seed "
            f"{trial['seed']}: {status}" + (f", loss {final:.4f}" if status == "done" else "") + f" ({seconds:.2f} s)")
        notice = floor_notice(trial, curves or {}, exp.measure.floor_warn, exp.optimizer in ("adam", "adamw"))
        if notice:
            say(notice)

    for members in groups.values():
        if exp.adaptive:
            _run_adaptive(exp, members, data, device, store, say, record)
        else:
            for trial, outcome in iter_members(exp, members, data, device, say):
                record(trial, outcome)
    return counts["ran"], counts["diverged"], counts["crashed"]
