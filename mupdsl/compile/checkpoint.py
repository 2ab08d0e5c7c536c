"""Checkpoints that carry their plan (design.md §3): ``model.pt`` (the state_dict), ``plan.json`` and
``manifest.json`` (the spec and model files with their content hashes, paths relative to the checkpoint), and for a
centered model ``init.pt`` (θ₀).

Loading re-derives the plan from the spec and the model file and refuses, naming what differs, when it is not the
saved one — an edited spec, model file or size never loads silently into a different parametrization. Weights load
with ``torch.load(..., weights_only=True)``. A plan that names a model *file* runs that file to rebuild the model:
load checkpoints only from sources you trust, as with any Python code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import hooks
from .api import compile_model
from .compiled import CompiledModel
from .errors import CompileError, listed
from .plan import Plan, plan_differences
from .saving import file_hash, model_file, save


def load_compiled(directory, map_location: str | None = "cpu", *, allow_changed_source: bool = False
                  ) -> CompiledModel:
    """Rebuild a compiled model saved by :meth:`CompiledModel.save`: re-derive its plan, refuse one that changed,
    and load the weights (``weights_only=True``)."""
    directory = Path(directory)
    try:
        saved = Plan.model_validate_json((directory / "plan.json").read_text())
        manifest = json.loads((directory / "manifest.json").read_text()) if (directory / "manifest.json").is_file() \
            else {"files": {}}
    except (OSError, ValueError) as exc:
        raise CompileError(f"{directory}: not a mupdsl checkpoint ({type(exc).__name__}: {exc})".splitlines()[0],
                           hint="it must hold plan.json and model.pt written by CompiledModel.save") from None
    files = manifest.get("files", {})
    spec = _located(directory, files.get("spec"), saved.spec)
    model = saved.model
    changed = []
    if "model" in files:
        path = _located(directory, files["model"], model_file(saved.model))
        model = str(path) + (f":{files['model']['attribute']}" if files["model"].get("attribute") else "")
        if file_hash(Path(path)) != files["model"]["sha256"]:
            changed.append(f"the model file {path} changed since the checkpoint was written")
    if changed and not allow_changed_source:
        raise CompileError("; ".join(changed), hint="load with allow_changed_source=True if the change is intended")
    net = saved.network
    compiled = compile_model(str(spec), model, width=net.width, base_width=net.base_width, depth=net.depth,
                             base_depth=net.base_depth, optimizer=saved.optimizer, overrides=saved.hypers,
                             seed=saved.seed)
    differences = plan_differences(saved, compiled.plan)
    if differences:
        raise CompileError(f"{directory}: the plan re-derived from {spec} and {model} is not the checkpoint's: "
                           + listed(differences, 6, "; "),
                           hint="the spec, the model file or a size changed since the checkpoint was written")
    state = torch.load(directory / "model.pt", map_location=map_location, weights_only=True)
    compiled.model.load_state_dict(state)
    if (directory / "init.pt").is_file():
        initial = torch.load(directory / "init.pt", map_location=map_location, weights_only=True)
        for hook in hooks.center_hooks(compiled.model):
            hook.initial = initial
    return compiled


def _located(directory: Path, entry: dict | None, fallback) -> Path | str:
    """A file named in the manifest, relative to the checkpoint; else the plan's own path (or preset name)."""
    if entry:
        candidate = (directory / entry["path"])
        if candidate.is_file():
            return candidate.resolve()
    return fallback


__all__ = ["load_compiled", "plan_differences", "save"]
