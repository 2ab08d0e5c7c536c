"""Where trial groups run: ``local`` (this process, the default), ``slurm`` through submitit job arrays, or
``ray`` as tasks on a Ray cluster.

With Slurm each array task trains its share of the trial groups and writes its own store (a shard under
``DIR/shards/``); the driver waits and merges the shards into the sweep's store, so the one-writer rule of SQLite
holds and a lost task loses only its shard (re-running resumes). ``cluster="local"`` runs the same path on this
machine through submitit's local executor — how it is tested.

With Ray each trial group is one task (``num_cpus``/``num_gpus`` per task); results travel back through Ray's
object store, so the workers need no shared file system, and the driver — the store's one writer — records each
group as soon as its task finishes (a killed driver loses only the groups in flight; re-running resumes). A task
that fails records its trials as crashed and the sweep goes on. ``address=None`` joins the cluster named by
``RAY_ADDRESS`` or starts a local one (how it is tested).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .experiment import Experiment
from .store import Store
from .trial import experiment_data, experiment_device, iter_members, pinned_threads, run_members


class EngineRefused(ValueError):
    """An engine asked to do what it does not do; the message says why."""


def engine_problem(exp: Experiment, engine: str) -> str | None:
    """Why ``engine`` cannot run ``exp`` as asked, or None."""
    if engine not in ("local", "slurm", "ray"):
        return f"unknown engine '{engine}': use local, slurm or ray"
    if engine != "local" and exp.adaptive:
        return (f"an adaptive learning-rate grid (lrs = {{start = …}}) runs on the local engine only: each rate "
                f"it tries depends on the trials before it, which --engine {engine} does not wait for. Give an "
                "explicit grid (lrs = [...] or {min, max, num}) to run on Slurm or Ray, or drop --engine")
    return None


def _shard_task(exp_json: str, groups: list[list[dict[str, Any]]], shard_dir: str) -> int:
    """One array task: run its groups into its own store; returns the number of trials it recorded."""
    exp = Experiment.model_validate_json(exp_json)
    store = Store(shard_dir)
    done = store.done_ids()
    data, device = experiment_data(exp), experiment_device(exp)
    with pinned_threads(exp.threads):  # Slurm narrows the task's affinity to its cores
        count = _run_shard(exp, groups, data, device, store, done)
    store.close()
    return count


def _run_shard(exp: Experiment, groups, data, device, store: Store, done: set[str]) -> int:
    """The shard's groups, minus what its store already holds (a resubmitted task resumes)."""
    count = 0
    for members in groups:
        todo = [t for t in members if t["id"] not in done]
        if not todo:
            continue
        for trial, (status, curves, final, final_eval, error, seconds) in iter_members(
                exp, todo, data, device, lambda _: None):
            store.record(trial, status, curves, final_loss=final, final_eval=final_eval, error=error,
                         seconds=seconds)
            count += 1
    return count


def merge_shard(store: Store, shard_dir: Path) -> int:
    """Copy a shard's trials and curves into the main store; returns how many were merged."""
    shard = Store(shard_dir)
    merged = 0
    for trial in shard.trials():
        curves = shard.curves(trial["id"]) if (shard_dir / "curves" / f"{trial['id']}.npz").exists() else {}
        store.record(shard.config(trial["id"]), trial["status"], {k: np.asarray(v) for k, v in curves.items()},
                     final_loss=trial["final_loss"], final_eval=trial["final_eval"], error=trial["error"],
                     seconds=trial["seconds"])
        merged += 1
    shard.close()
    return merged


def run_slurm(exp: Experiment, groups: list[list[dict[str, Any]]], out: Path, store: Store, *, tasks: int = 4,
              cluster: str | None = None, say: Callable[[str], None] = print, **slurm: Any) -> int:
    """Run the groups as a submitit job array of ``tasks`` shards; merge them; returns the trials merged."""
    import submitit  # noqa: PLC0415 - an optional dependency

    tasks = max(1, min(tasks, len(groups)))
    shards = [groups[i::tasks] for i in range(tasks)]
    folder = out / "submitit"
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(timeout_min=slurm.pop("timeout_min", 240), **slurm)
    dirs = [str(out / "shards" / f"task{i}") for i in range(tasks)]
    jobs = executor.map_array(_shard_task, [exp.model_dump_json()] * tasks, shards, dirs)
    say(f"submitted {tasks} array tasks ({cluster or 'slurm'}): {', '.join(j.job_id for j in jobs)}")
    merged = 0
    for job, shard_dir in zip(jobs, dirs):
        try:
            count = job.result()
            say(f"task {job.job_id} finished: {count} trials")
        except Exception as exc:  # noqa: BLE001 - a lost task loses only its shard
            say(f"task {job.job_id} failed: {type(exc).__name__}: {exc}; its shard is kept for resuming")
        if Path(shard_dir).exists():
            merged += merge_shard(store, Path(shard_dir))
    shutil.rmtree(out / "shards", ignore_errors=True)
    return merged


def _group_task(exp_json: str, members: list[dict[str, Any]]) -> list[tuple]:
    """One Ray task: train a group; returns its outcomes (status, curves, final, final_eval, error, seconds)."""

    exp = Experiment.model_validate_json(exp_json)
    with pinned_threads(exp.threads or max(1, int(ray_cpus()))):  # the task's share, not the node's cores
        return run_members(exp, members, experiment_data(exp), experiment_device(exp), lambda _: None)


def ray_cpus() -> float:
    """CPUs Ray assigned to the calling task (1 outside a task)."""
    import ray  # noqa: PLC0415

    try:
        return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
    except Exception:  # noqa: BLE001 - not inside a task
        return 1.0


def run_ray(exp: Experiment, groups: list[list[dict[str, Any]]], store: Store, *, address: str | None = None,
            num_cpus: float = 1, num_gpus: float = 0, say: Callable[[str], None] = print) -> int:
    """Run every group as a Ray task; record each group's trials when its task finishes; returns the count."""
    import ray  # noqa: PLC0415 - an optional dependency (pip install 'mupdsl[ray]')

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    try:
        task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(_group_task)
        spec = exp.model_dump_json()
        pending = {task.remote(spec, members): members for members in groups}
        say(f"submitted {len(pending)} trial groups to Ray ({ray.cluster_resources().get('CPU', 0):.0f} CPUs)")
        recorded = 0
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            members = pending.pop(ref)
            try:
                outcomes = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - a lost task is a crashed result; the sweep goes on
                error = f"{type(exc).__name__}: {exc}"
                outcomes = [("crashed", {}, None, None, error, 0.0)] * len(members)
            for trial, (status, curves, final, final_eval, error, seconds) in zip(members, outcomes):
                store.record(trial, status, curves, final_loss=final, final_eval=final_eval, error=error,
                             seconds=seconds)
                recorded += 1
            head = members[0]
            say(f"[{recorded}] {head['spec']} width {head['width']}: {len(members)} trials "
                f"({', '.join(sorted({o[0] for o in outcomes}))})")
        return recorded
    finally:
        if started:
            ray.shutdown()
