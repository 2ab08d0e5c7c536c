"""The result store: a SQLite index (one writer) plus one compressed numpy file of curves per trial.

Each finished trial is committed at once, so a killed sweep loses only what was in flight (one trial, or the
vmapped group being trained); re-running the same command resumes (plan − done). A diverged trial is a result; a
crashed trial is recorded with its error. A trial whose curve file is missing or unreadable is not done: resuming
trains it again, and the report names it.

The index records the schema version and the mupdsl version that created it; a store of another schema is
refused with a clear message (never read as if it were this one). It also keeps the trial ids and gate keys of
the experiment as last run (what the report shows) and the files the report wrote (what ``--fresh`` may delete).
"""

from __future__ import annotations

import json
import sqlite3
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterable

import numpy as np

SCHEMA_VERSION = 2
"""Version 2: trial ids are content keys (spec and model source, dataset, every result-changing setting), gates
are keyed likewise; version 1 (no ``meta`` table) keyed them by name."""

INDEX = "index.sqlite"
CURVES = "curves"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS trials (
    id TEXT PRIMARY KEY,
    spec TEXT, width INTEGER, depth INTEGER, lr REAL, seed INTEGER, gamma REAL,
    status TEXT,            -- done | diverged | crashed
    final_loss REAL, final_eval REAL,
    error TEXT, seconds REAL, config TEXT
);
CREATE TABLE IF NOT EXISTS gates (key TEXT PRIMARY KEY, spec TEXT, verdict TEXT, detail TEXT);
CREATE TABLE IF NOT EXISTS current (kind TEXT, key TEXT, PRIMARY KEY (kind, key));
CREATE TABLE IF NOT EXISTS outputs (name TEXT PRIMARY KEY);
"""


class StoreError(Exception):
    """A result folder that cannot be used as it is: the message names the file and what to do."""


def mupdsl_version() -> str:
    try:
        return version("mupdsl")
    except PackageNotFoundError:
        return "unknown"


def _unreadable(path: Path, problem: str) -> StoreError:
    return StoreError(f"{path}: {problem}. It is the sweep's result index: move the folder away (or delete "
                      f"{path.name}, {CURVES}/ and experiment.json) to start over, or re-run the sweep with --fresh, "
                      "which deletes only the sweep's own files")


class Store:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = self.root / INDEX
        existed = path.exists() and path.stat().st_size > 0
        (self.root / CURVES).mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(path, timeout=30)
        except sqlite3.Error as exc:
            raise _unreadable(path, f"cannot be opened ({exc})") from None
        try:
            if existed:
                self._check(path)
            self.db.executescript(SCHEMA)
            if not existed:
                self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                    [("schema", str(SCHEMA_VERSION)), ("mupdsl", mupdsl_version())])
            self.db.commit()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise _unreadable(path, f"is not a readable SQLite database ({exc}): corrupted or truncated") from None
        except StoreError:
            self.db.close()
            raise

    def _check(self, path: Path) -> None:
        """The integrity and schema of an existing index (raises sqlite3.DatabaseError or StoreError)."""
        problems = [row[0] for row in self.db.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("; ".join(problems[:3]))
        tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return  # an empty database (a sweep killed while creating it): set up as new
        meta = dict(self.db.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
        schema = meta.get("schema", "1")
        if schema != str(SCHEMA_VERSION):
            by = meta.get("mupdsl", "an older mupdsl")
            raise StoreError(f"{path}: written by mupdsl {by} with store schema {schema}; this mupdsl "
                             f"({mupdsl_version()}) reads schema {SCHEMA_VERSION} only. Its results cannot be reused: "
                             "give another --out, or re-run with --fresh to replace them (only the sweep's own files "
                             "are deleted)")

    def meta(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM meta"))

    # -- trials -----------------------------------------------------------------------------------------------

    def curve_path(self, trial_id: str) -> Path:
        return self.root / CURVES / f"{trial_id}.npz"

    def done_ids(self) -> set[str]:
        """Finished trials (done or diverged) whose curves can be read: the ones a resumed sweep skips."""
        rows = self.db.execute("SELECT id, status FROM trials WHERE status != 'crashed'").fetchall()
        broken = self.broken_curves(rows)
        return {trial_id for trial_id, _ in rows if trial_id not in broken}

    def broken_curves(self, trials: Iterable) -> dict[str, str]:
        """``{id: problem}`` for the finished trials (``{"id", "status"}`` records or ``(id, status)`` pairs) whose
        curve file is missing or unreadable."""
        out = {}
        for t in trials:
            trial_id, status = (t["id"], t["status"]) if isinstance(t, dict) else t
            if status == "crashed":
                continue
            problem = self.curve_problem(trial_id)
            if problem:
                out[trial_id] = problem
        return out

    def curve_problem(self, trial_id: str) -> str | None:
        path = self.curve_path(trial_id)
        if not path.exists():
            return f"{path} is missing"
        try:
            self.curves(trial_id)
        except Exception as exc:  # noqa: BLE001 - any failure to read the file is the same problem to the user
            return f"{path} is unreadable ({type(exc).__name__}: {exc})"
        return None

    def record(self, trial: dict[str, Any], status: str, curves: dict[str, np.ndarray], *, final_loss: float | None,
               final_eval: float | None, error: str | None, seconds: float) -> None:
        tmp = self.root / CURVES / f"{trial['id']}.tmp.npz"
        np.savez_compressed(tmp, **curves)
        tmp.replace(self.curve_path(trial["id"]))
        self.db.execute("INSERT OR REPLACE INTO trials VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (trial["id"], trial["spec"], trial["width"], trial.get("depth"), trial["lr"], trial["seed"],
                         trial.get("gamma"),
                         status, final_loss, final_eval, error, seconds, json.dumps(trial)))
        self.db.commit()

    def trials(self) -> list[dict[str, Any]]:
        cols = ["id", "spec", "width", "depth", "lr", "seed", "gamma", "status", "final_loss", "final_eval", "error",
                "seconds"]
        return [dict(zip(cols, row)) for row in self.db.execute(f"SELECT {', '.join(cols)} FROM trials")]

    def config(self, trial_id: str) -> dict[str, Any]:
        """The trial as it was planned (its full key)."""
        (text,) = self.db.execute("SELECT config FROM trials WHERE id = ?", (trial_id,)).fetchone()
        return json.loads(text)

    def curves(self, trial_id: str) -> dict[str, np.ndarray]:
        with np.load(self.curve_path(trial_id)) as data:
            return {k: data[k] for k in data.files}

    # -- coordinate-check gates, keyed by content ---------------------------------------------------------------

    def record_gate(self, key: str, spec: str, verdict: str, detail: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO gates VALUES (?,?,?,?)", (key, spec, verdict, detail))
        self.db.commit()

    def gate(self, key: str) -> tuple[str, str] | None:
        row = self.db.execute("SELECT verdict, detail FROM gates WHERE key = ?", (key,)).fetchone()
        return None if row is None else (row[0], row[1])

    def gates(self, keys: Iterable[str] | None = None) -> dict[str, tuple[str, str]]:
        """``{spec: (verdict, detail)}`` of the gates with these keys (all gates when None; the last one recorded
        per spec)."""
        wanted = None if keys is None else set(keys)
        rows = self.db.execute("SELECT key, spec, verdict, detail FROM gates ORDER BY rowid")
        return {s: (v, d) for k, s, v, d in rows if wanted is None or k in wanted}

    # -- the experiment as last run, and the files the report wrote ---------------------------------------------

    def set_current(self, trial_ids: Iterable[str], gate_keys: Iterable[str]) -> None:
        self.db.execute("DELETE FROM current")
        self.db.executemany("INSERT OR IGNORE INTO current VALUES (?, ?)",
                            [("trial", i) for i in trial_ids] + [("gate", k) for k in gate_keys])
        self.db.commit()

    def current(self) -> tuple[set[str], set[str]] | None:
        """(trial ids, gate keys) of the experiment as last run into this store; None if none was recorded."""
        rows = self.db.execute("SELECT kind, key FROM current").fetchall()
        if not rows:
            return None
        return {k for kind, k in rows if kind == "trial"}, {k for kind, k in rows if kind == "gate"}

    def record_output(self, name: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO outputs VALUES (?)", (name,))
        self.db.commit()

    def outputs(self) -> list[str]:
        return [row[0] for row in self.db.execute("SELECT name FROM outputs")]

    def close(self) -> None:
        self.db.close()
