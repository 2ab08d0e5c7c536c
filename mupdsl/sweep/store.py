"""The result store: a SQLite index (one writer) plus one compressed numpy file of curves per trial.

Each finished trial is committed at once, so a killed sweep loses only the trial in flight; re-running the same
command resumes (plan − done). A diverged trial is a result; a crashed trial is recorded with its error.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    id TEXT PRIMARY KEY,
    spec TEXT, width INTEGER, depth INTEGER, lr REAL, seed INTEGER, gamma REAL,
    status TEXT,            -- done | diverged | crashed
    final_loss REAL, final_eval REAL,
    error TEXT, seconds REAL, config TEXT
);
CREATE TABLE IF NOT EXISTS gates (spec TEXT PRIMARY KEY, verdict TEXT, detail TEXT);
"""


class Store:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        (self.root / "curves").mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.root / "index.sqlite", timeout=30)
        self.db.executescript(SCHEMA)
        self.db.commit()

    def done_ids(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT id FROM trials WHERE status != 'crashed'")}

    def record(self, trial: dict[str, Any], status: str, curves: dict[str, np.ndarray], *, final_loss: float | None,
               final_eval: float | None, error: str | None, seconds: float) -> None:
        tmp = self.root / "curves" / f"{trial['id']}.tmp.npz"
        np.savez_compressed(tmp, **curves)
        tmp.replace(self.root / "curves" / f"{trial['id']}.npz")
        self.db.execute("INSERT OR REPLACE INTO trials VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (trial["id"], trial["spec"], trial["width"], trial.get("depth"), trial["lr"], trial["seed"],
                         trial.get("gamma"),
                         status, final_loss, final_eval, error, seconds, json.dumps(trial)))
        self.db.commit()

    def record_gate(self, spec: str, verdict: str, detail: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO gates VALUES (?,?,?)", (spec, verdict, detail))
        self.db.commit()

    def gates(self) -> dict[str, tuple[str, str]]:
        return {s: (v, d) for s, v, d in self.db.execute("SELECT spec, verdict, detail FROM gates")}

    def trials(self) -> list[dict[str, Any]]:
        cols = ["id", "spec", "width", "depth", "lr", "seed", "gamma", "status", "final_loss", "final_eval", "error",
                "seconds"]
        return [dict(zip(cols, row)) for row in self.db.execute(f"SELECT {', '.join(cols)} FROM trials")]

    def curves(self, trial_id: str) -> dict[str, np.ndarray]:
        with np.load(self.root / "curves" / f"{trial_id}.npz") as data:
            return {k: data[k] for k in data.files}

    def close(self) -> None:
        self.db.close()
