"""The result folder of a sweep: one sweep at a time (a lock file holding the owner's pid), one experiment per
folder (its ``experiment.json``), and ``--fresh`` deleting only what the sweep wrote there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
from pathlib import Path
from typing import Any, Iterator

from .store import CURVES, INDEX, Store, StoreError

LOCK = "sweep.lock"
RECORD = "experiment.json"
CURVE_FILE = re.compile(r"[0-9a-f]{16}(\.tmp)?\.npz")
"""The curve files a store writes (a trial id is 16 hex digits)."""


class FolderInUse(StoreError):
    """Another sweep holds the folder: ``pid`` (and ``host``) name it."""

    def __init__(self, message: str, pid: int | None, host: str | None) -> None:
        super().__init__(message)
        self.pid, self.host = pid, host


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True   # someone else's process
    except OSError:
        return False
    return True


def _holder(path: Path) -> tuple[int | None, str | None]:
    """(pid, host) written in a lock file; (None, None) when it is unreadable or garbled."""
    try:
        fields = path.read_text().split()
        return int(fields[0]), (fields[1] if len(fields) > 1 else None)
    except (OSError, ValueError, IndexError):
        return None, None


def _create(tmp: Path, path: Path) -> None:
    """``path`` created holding ``tmp``'s text, atomically where hard links work; FileExistsError if it exists."""
    try:
        os.link(tmp, path)   # created with its content, or not at all
    except FileExistsError:
        raise
    except OSError:          # a file system without hard links
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(tmp.read_text())


@contextlib.contextmanager
def folder_lock(root: str | Path) -> Iterator[Path]:
    """Hold ``root/sweep.lock`` for the block. A lock whose process is gone (on this host), or a garbled one, is
    taken over; a live holder is refused with its pid."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK
    host = socket.gethostname()
    tmp = root / f".{LOCK}.{os.getpid()}"
    tmp.write_text(f"{os.getpid()} {host}\n")
    try:
        for _ in range(3):
            try:
                _create(tmp, path)
                break
            except FileExistsError:
                pid, where = _holder(path)
                if pid is not None and (where not in (None, host) or _alive(pid)):
                    place = f" on {where}" if where not in (None, host) else ""
                    raise FolderInUse(f"{root} is in use by another sweep (pid {pid}{place}, {path}): wait for it to "
                                      "finish or stop it, or give another --out. If no such sweep runs, delete "
                                      f"{path}", pid, where) from None
                stale = root / f".{LOCK}.stale.{os.getpid()}"
                try:
                    os.replace(path, stale)   # only one of two racing sweeps gets the stale file
                except FileNotFoundError:
                    continue
                if _holder(stale) != (pid, where):   # a racing sweep took it over meanwhile: give it back
                    with contextlib.suppress(OSError):
                        _create(stale, path)
                    stale.unlink(missing_ok=True)
                    continue
                stale.unlink()
        else:
            raise FolderInUse(f"{root}: cannot take the lock {path}; delete it if no sweep runs there", None, None)
    finally:
        tmp.unlink(missing_ok=True)
    try:
        yield path
    finally:
        if _holder(path)[0] == os.getpid():
            path.unlink(missing_ok=True)


def read_record(root: str | Path) -> dict[str, Any] | None:
    """The experiment recorded in ``root/experiment.json`` (None when there is none); a garbled one raises
    StoreError naming the file and what to do."""
    path = Path(root) / RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        record, problem = None, str(exc)
    else:
        problem = "not an experiment (a JSON object with a name)"
    if not isinstance(record, dict) or not isinstance(record.get("name"), str):
        raise StoreError(f"{path}: garbled ({problem}). It is the sweep's record of its experiment: re-run the "
                         "sweep with --fresh to start over (only the sweep's own files are deleted), or delete it "
                         "and re-run the sweep (finished trials are kept: they are matched by content)")
    return record


def write_record(root: str | Path, text: str) -> None:
    path = Path(root) / RECORD
    tmp = path.with_name(f".{RECORD}.{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def check_same_experiment(root: str | Path, name: str) -> None:
    """Refuse to run experiment ``name`` into a folder holding another experiment's results."""
    record = read_record(root)
    if record is not None and record["name"] != name:
        raise StoreError(f"{root} holds the results of experiment '{record['name']}' ({Path(root) / RECORD}), not "
                         f"'{name}': give another --out, or pass --fresh to replace them")


def clear(root: str | Path) -> list[Path]:
    """Delete what a sweep wrote in ``root`` — its index, curve files, experiment record, the report and figures
    it recorded, leftover Slurm shards — and nothing else; returns the paths deleted. Folders are removed only
    when empty."""
    root = Path(root)
    if not root.is_dir():
        return []
    doomed: list[Path] = []
    if (root / INDEX).exists():
        try:
            store = Store(root)
        except StoreError:
            pass   # unreadable: its report and figures are not known and stay
        else:
            doomed += [root / name for name in store.outputs() if Path(name).name == name]
            store.close()
    doomed += [root / name for name in (INDEX, f"{INDEX}-journal", f"{INDEX}-wal", f"{INDEX}-shm", RECORD)]
    curves = root / CURVES
    if curves.is_dir():
        doomed += [p for p in curves.iterdir() if CURVE_FILE.fullmatch(p.name)]
    deleted = []
    for path in doomed:
        if path.is_file():
            path.unlink()
            deleted.append(path)
    shards = root / "shards"
    if shards.is_dir():
        for task in shards.iterdir():
            if task.is_dir():
                deleted += clear(task)
                _remove_if_empty(task)
        _remove_if_empty(shards)
    _remove_if_empty(curves)
    return deleted


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def open_folder(root: str | Path, exp, *, fresh: bool) -> Store:
    """The store of ``exp`` in ``root`` (call it holding :func:`folder_lock`, once the inputs validated):
    with ``fresh`` the sweep's earlier files there are deleted first; without, a folder holding another
    experiment is refused. The experiment is recorded beside the store."""
    if fresh:
        clear(root)
    else:
        check_same_experiment(root, exp.name)
    store = Store(root)
    write_record(root, exp.model_dump_json(indent=1))
    return store
