"""Where trial groups run: ``local`` (this process, the default) or ``slurm`` through submitit job arrays.

With Slurm each array task trains its share of the trial groups and writes its own store (a shard under
``DIR/shards/``); the driver waits and merges the shards into the sweep's store, so the one-writer rule of SQLite
holds and a lost task loses only its shard (re-running resumes). ``cluster="local"`` runs the same path on this
machine through submitit's local executor — how it is tested. Ray is not built yet.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .experiment import Experiment
from .store import Store


def _shard_task(exp_json: str, groups: list[list[dict[str, Any]]], shard_dir: str) -> int:
    """One array task: run its groups into its own store; returns the number of trials it recorded."""
    from .run import _data, _device, _run_members  # noqa: PLC0415

    exp = Experiment.model_validate_json(exp_json)
    store = Store(shard_dir)
    done = store.done_ids()
    data, device, count = _data(exp), _device(exp), 0
    for members in groups:
        todo = [t for t in members if t["id"] not in done]
        if not todo:
            continue
        for trial, (status, curves, final, final_eval, error, seconds) in zip(
                todo, _run_members(exp, todo, data, device, lambda _: None)):
            store.record(trial, status, curves, final_loss=final, final_eval=final_eval, error=error,
                         seconds=seconds)
            count += 1
    store.close()
    return count


def merge_shard(store: Store, shard_dir: Path) -> int:
    """Copy a shard's trials and curves into the main store; returns how many were merged."""
    shard = Store(shard_dir)
    merged = 0
    for trial in shard.trials():
        curves = shard.curves(trial["id"]) if (shard_dir / "curves" / f"{trial['id']}.npz").exists() else {}
        config = dict(shard.db.execute("SELECT id, config FROM trials WHERE id = ?", (trial["id"],)).fetchall())
        import json  # noqa: PLC0415

        store.record(json.loads(config[trial["id"]]), trial["status"], {k: np.asarray(v) for k, v in curves.items()},
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
