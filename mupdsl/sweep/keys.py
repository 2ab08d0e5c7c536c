"""Content keys: a trial's id, and a coordinate-check gate's key, hash what its result depends on — the spec's
text and every file it extends, the model's source, the dataset and its arguments (a text file's bytes), and
every experiment setting that changes a result — so an edited spec, model or setting gives new ids and a stale
result is never read back as a new one.

Settings that do not change a result (the name, ``ungated``, the device, threads, grouping, the CIFAR checksum
check) stay out of the key; the coordinates of a trial (spec, width, depth, learning rate, seed, γ) are in it one
value each, so widening a grid keeps the trials already run. Every other experiment key is in, including keys
added later. Only the model's own file is hashed, not modules it imports.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from ..spec import load_spec
from .experiment import Experiment

COORDINATES = frozenset({"specs", "widths", "depths", "lrs", "seeds", "gammas", "depth", "base_width", "base_depth"})
"""Experiment keys that enter a trial's key as its own value (resolved: the base width defaults to the smallest)."""
NO_EFFECT = frozenset({"name", "ungated", "device", "threads", "group", "data_verify", "coordcheck_widths"})
"""Experiment keys that do not change a trial's result (``coordcheck_widths`` is in the gate's key)."""
SILENT_AT_DEFAULT = {"schedule": "constant", "decay_to": 0.0}
"""Keys added after stores were written: at their default they stay out of the key, so those trials keep their ids."""
MEASURE_SILENT_AT_DEFAULT = {"probe": 0, "sharpness_lrs": []}
"""The same for the ``[measure]`` table."""
DATASET_ARGS = {"text": ("text_file", "context"), "cifar10": ("data_root",), "linear": ("input_dim",)}
"""The keys that matter only to one dataset."""


def digest(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """The bytes of a file, hashed; ``missing:PATH`` when it cannot be read."""
    try:
        return hashlib.sha1(Path(path).read_bytes()).hexdigest()
    except OSError:
        return f"missing:{path}"


def spec_digest(spec: str) -> str:
    """The spec's own file and every file it extends, in order (raises SpecError for a bad spec)."""
    return digest([file_digest(path) for path in load_spec(spec).chain])


def model_source(model: str) -> Path | None:
    """The file that defines ``model`` (``path.py[:Name]`` or ``package.module[:name]``), or None."""
    text = str(model)
    windows_drive = len(text) > 1 and text[1] == ":" and text[2:3] in "\\/"
    base = text if windows_drive else text.partition(":")[0]
    if base.endswith(".py") or "/" in base:
        return Path(base)
    try:
        found = importlib.util.find_spec(base)
    except (ImportError, ValueError):
        return None
    return Path(found.origin) if found is not None and found.origin not in (None, "built-in", "frozen") else None


def model_digest(model: str) -> str:
    source = model_source(model)
    return file_digest(source) if source is not None else f"unresolved:{model}"


def dataset_args(exp: Experiment) -> dict[str, Any]:
    """The dataset's arguments; a text file by its bytes."""
    args = {key: getattr(exp, key) for key in DATASET_ARGS.get(exp.dataset, ())}
    if exp.dataset == "text":
        args["text_file"] = file_digest(exp.text_file)
    return args


def result_settings(exp: Experiment, taken: set[str]) -> dict[str, Any]:
    """Every experiment key that changes a result and is not already in the trial (``taken``)."""
    dataset_only = {k for keys in DATASET_ARGS.values() for k in keys}
    skip = COORDINATES | NO_EFFECT | dataset_only | taken
    return {k: v for k, v in exp.model_dump(mode="json").items()
            if k not in skip and not _silent(k, v, SILENT_AT_DEFAULT)}


def _silent(key: str, value: Any, defaults: dict[str, Any]) -> bool:
    return key in defaults and value == defaults[key]


def measure_key(exp: Experiment) -> dict[str, Any]:
    """The ``[measure]`` table as it enters a trial's key, keys added later left out at their default."""
    return {k: v for k, v in exp.measure.model_dump(mode="json").items()
            if not _silent(k, v, MEASURE_SILENT_AT_DEFAULT)}


def plan_trials(exp: Experiment) -> list[dict[str, Any]]:
    """Every (spec, width, depth, lr, seed, γ) with its id: a hash of everything that shapes its result."""
    trials = []
    gammas = exp.gammas or [None]
    specs = {spec: spec_digest(spec) for spec in exp.specs}
    model_sha = model_digest(exp.model)
    data = dataset_args(exp)
    base_depth = exp.base_depth or (min(exp.depths) if exp.depths else exp.depth)
    for spec in exp.specs:
        for width, depth in [(w, d) for w in exp.widths for d in exp.depth_values()]:
            for lr in exp.lr_values():
                for seed in exp.seeds:
                    for gamma in gammas:
                        key = dict(spec=spec, model=exp.model, dataset=exp.dataset, width=width,
                                   base_width=exp.base_width or exp.widths[0], depth=depth,
                                   base_depth=base_depth, optimizer=exp.optimizer, lr=lr, seed=seed, gamma=gamma,
                                   gamma_name=exp.gamma_name, steps=exp.steps, batch_size=exp.batch_size,
                                   warmup=exp.warmup, dtype=exp.dtype, measure=measure_key(exp),
                                   num_samples=exp.num_samples, spec_sha=specs[spec], model_sha=model_sha,
                                   data=data)
                        key["settings"] = result_settings(exp, set(key))
                        trials.append({"id": digest(key), **key})
    return trials


def gate_gamma(gammas: list[float]) -> float:
    """The γ a γ-sweep is gated at: 1 (the feature-learning scale of µP) when swept, else the middle value."""
    return 1.0 if 1.0 in gammas else sorted(gammas)[len(gammas) // 2]


def gate_options(exp: Experiment) -> dict[str, Any]:
    """The coordinate check's arguments (besides spec and model) for an experiment's gate."""
    widths = tuple(exp.coordcheck_widths or exp.widths[:4])
    if len(widths) < 2:
        widths = (widths[0], 2 * widths[0])
    return dict(widths=widths, optimizer=exp.optimizer, seeds=2, depth=exp.depth, base_depth=exp.base_depth,
                data="mnist1d" if exp.dataset == "mnist1d" else "example",
                overrides={exp.gamma_name: gate_gamma(exp.gammas)} if exp.gammas else None)


def gate_keys(exp: Experiment) -> dict[str, str]:
    """``{spec: key}``: what each spec's gate verdict depends on (spec and model source, the check's options)."""
    options = gate_options(exp)
    model_sha = model_digest(exp.model)
    return {spec: digest(dict(spec=spec, spec_sha=spec_digest(spec), model=exp.model, model_sha=model_sha,
                              options=options)) for spec in exp.specs}


def inputs_found(exp: Experiment) -> bool:
    """Whether the experiment's model file (and text file) can be read from here: only then do its recomputed
    keys say what changed (a relative path read from another folder would call every result stale)."""
    source = model_source(exp.model)
    if source is None or not source.is_file():
        return False
    return exp.dataset != "text" or Path(exp.text_file).is_file()
