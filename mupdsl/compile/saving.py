"""Writing a checkpoint that carries its plan (design.md §3): ``model.pt`` (the state_dict), ``plan.json`` and
``manifest.json`` (the spec and model files with their content hashes, paths relative to the checkpoint), and for a
centered model ``init.pt`` (θ₀). Reading it back, with the plan re-derived and checked, is
:func:`mupdsl.compile.checkpoint.load_compiled`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from . import hooks


def file_hash(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def model_file(source: str) -> Path | None:
    base = source.split(":")[0] if not (len(source) > 1 and source[1] == ":") else source
    return Path(base) if base.endswith(".py") else None


def relative_path(path: Path, directory: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), directory.resolve())
    except ValueError:  # another drive
        return str(path.resolve())


def save(compiled, directory) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plan = compiled.plan
    torch.save(compiled.model.state_dict(), directory / "model.pt")
    (directory / "plan.json").write_text(json.dumps(plan.model_dump(), indent=1))
    files = {}
    spec_path = Path(plan.spec)
    if spec_path.is_file():
        files["spec"] = {"path": relative_path(spec_path, directory), "sha256": file_hash(spec_path)}
    source = model_file(plan.model)
    if source is not None and source.is_file():
        files["model"] = {"path": relative_path(source, directory), "sha256": file_hash(source),
                          "attribute": plan.model.split(":", 1)[1] if ":" in plan.model else None}
    (directory / "manifest.json").write_text(json.dumps({"files": files, "torch": torch.__version__}, indent=1))
    centers = hooks.center_hooks(compiled.model)
    if centers:
        torch.save(centers[0].initial, directory / "init.pt")
    return directory
