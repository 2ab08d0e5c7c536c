"""Experiment files (TOML in ``runners/``), validated with pydantic; errors name the file, the key and its line.

```toml
name = "demo"
specs = ["mup", "sp"]
model = "mupdsl.models.mlp"
dataset = "mnist1d"
widths = [64, 128, 256]
base_width = 64
optimizer = "sgd"
lrs = { min = 0.01, max = 10.0, num = 9 }     # a log grid; or an explicit list: lrs = [0.01, 0.1, 1.0]
seeds = [0]
steps = 200
batch_size = 64
ungated = ["sp"]

[measure]
sharpness_every = 20
eval_every = 20
```
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ExperimentError(Exception):
    """A bad experiment file: ``file:line: key: message``."""

    def __init__(self, path: str, line: int, key: str, message: str) -> None:
        super().__init__(f"{path}:{line}: {key}: {message}")
        self.path, self.line, self.key, self.message = path, line, key, message

    def render(self) -> str:
        return f"{self.path}:{self.line}: error: {self.key}: {self.message}"


class LogGrid(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min: float = Field(gt=0)
    max: float = Field(gt=0)
    num: int = Field(ge=2)

    def values(self) -> list[float]:
        a, b = math.log(self.min), math.log(self.max)
        return [math.exp(a + (b - a) * i / (self.num - 1)) for i in range(self.num)]


class AdaptiveGrid(BaseModel):
    """Seed 003's search: from a large η downward by ``factor`` until the first trial that converges, then
    ``below`` more steps under it (so each size gets its own window around its largest stable rate)."""

    model_config = ConfigDict(extra="forbid")
    start: float = Field(gt=0)
    factor: float = Field(2.0, gt=1)
    below: int = Field(4, ge=1)
    floor: float = Field(1e-6, gt=0)

    def values(self) -> list[float]:
        """Every rate the search may visit, largest first."""
        out, lr = [], self.start
        while lr >= self.floor:
            out.append(lr)
            lr /= self.factor
        return out


class Measure(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sharpness_every: int = Field(0, ge=0)
    top_k: int = Field(1, ge=1)
    eval_every: int = Field(10, ge=1)
    tol: float = Field(1e-3, gt=0)
    batch_size: int = Field(256, ge=1)
    trace_samples: int = Field(0, ge=0)
    """Hutchinson samples for tr(S H S) at each sharpness measurement (0: off)."""
    directional: bool = False
    """Directional sharpness uᵀAu/‖u‖² along the preconditioned gradient u = S g (seed 002 App. I)."""
    ntk: bool = False
    """Top eigenvalue of the empirical NTK J S² Jᵀ / n on the measurement batch (small models: dense Jacobian)."""


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    specs: list[str] = Field(min_length=1)
    model: str
    dataset: Literal["mnist1d", "teacher", "cifar10", "linear", "text"] = "mnist1d"
    loss: Literal["ce", "mse"] = "ce"
    full_batch: bool = False
    """Every step on the whole training set (gradient descent), e.g. seed 002 Sec. 5."""
    input_dim: int = Field(16, ge=1)
    """D of the ``linear`` task (X = I_D, Y = X w*)."""
    data_root: str = "data"
    """Folder holding cifar-10-batches-py for dataset = "cifar10" (never downloaded)."""
    text_file: str = "data/input.txt"
    """The local text file of dataset = "text" (character level: next-character prediction, for GPT-style models)."""
    context: int = Field(16, ge=1)
    """Characters per example of dataset = "text" (at most the model's context length)."""
    data_verify: bool = True
    """Check torchvision's md5 sums of the CIFAR-10 files (off for CIFAR-format folders made by tests)."""
    widths: list[int] = Field(min_length=1)
    base_width: int | None = None
    depth: int | None = None
    depths: list[int] = []
    """Depths to sweep (transfer across depth, seed 002 Fig. 4); the base depth defaults to the smallest."""
    base_depth: int | None = None
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lrs: list[float] | LogGrid | AdaptiveGrid
    seeds: list[int] = [0]
    gammas: list[float] = []
    gamma_name: str = "gamma0"
    steps: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=1)
    warmup: int = Field(0, ge=0)
    ungated: list[str] = []
    device: str = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    coordcheck_widths: list[int] = []
    threads: int | None = Field(None, ge=1)
    """Intra-op threads of each worker (default: the cores this process may run on — its CPU affinity, which
    Slurm and containers narrow — not the machine's count, which would oversubscribe them)."""
    group: bool = True
    """Train the trials of one (spec, width, γ) as one vmapped model (see sweep/grouped.py)."""
    measure: Measure = Measure()
    num_samples: int = Field(4000, ge=100)

    @field_validator("widths")
    @classmethod
    def _positive(cls, widths: list[int]) -> list[int]:
        if any(w <= 0 for w in widths):
            raise ValueError("widths must be positive")
        return sorted(widths)

    @model_validator(mode="after")
    def _check(self) -> "Experiment":
        unknown = set(self.ungated) - set(self.specs)
        if unknown:
            raise ValueError(f"ungated names specs that are not in specs: {', '.join(sorted(unknown))}")
        return self

    def depth_values(self) -> list[int | None]:
        return sorted(self.depths) if self.depths else [self.depth]

    @property
    def size(self) -> str:
        """What the transfer analysis compares across: "depth" when depths are swept at one width, else "width"."""
        return "depth" if len(self.depths) > 1 and len(self.widths) == 1 else "width"

    def lr_values(self) -> list[float]:
        return sorted(self.lrs.values() if isinstance(self.lrs, (LogGrid, AdaptiveGrid)) else self.lrs)

    @property
    def adaptive(self) -> bool:
        return isinstance(self.lrs, AdaptiveGrid)


def small(exp: Experiment) -> Experiment:
    """The ``--small`` version of a GPU-sized experiment, for CPU tests: two narrow widths, few steps, lrs and
    seeds, and a small dataset."""
    lrs = exp.lr_values()
    keep = lrs[:: max(1, len(lrs) // 4)][:5]
    return exp.model_copy(update={
        "widths": [w for w in exp.widths if w <= 128][:2] or [16, 32], "steps": min(exp.steps, 20),
        "lrs": keep, "seeds": exp.seeds[:1], "num_samples": min(exp.num_samples, 600),
        "gammas": sorted(sorted(exp.gammas, key=lambda g: abs(math.log(g)))[:3]),
        "coordcheck_widths": [64, 128, 256, 512], "measure": exp.measure.model_copy(update={
            "sharpness_every": min(exp.measure.sharpness_every, 5) if exp.measure.sharpness_every else 0,
            "eval_every": 10, "batch_size": min(exp.measure.batch_size, 64)})})


def _line_of(text: str, key: str) -> int:
    leaf = key.split(".")[-1]
    match = re.search(rf"^\s*{re.escape(leaf)}\s*=", text, re.MULTILINE)
    if match is None and "." in key:
        match = re.search(rf"^\s*\[{re.escape(key.split('.')[0])}\]", text, re.MULTILINE)
    return text[: match.start()].count("\n") + 1 if match else 1


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> Experiment:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ExperimentError(str(path), 0, "file", exc.strerror or "cannot read") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        line = int(found.group(1)) if found else max(len(text.splitlines()), 1)
        raise ExperimentError(str(path), line, "syntax", str(exc).split(" (at")[0]) from None
    data.update(overrides or {})
    try:
        return Experiment.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"] if not isinstance(p, int)) or "experiment"
        key = key.split(".LogGrid")[0].replace(".list[float]", "")
        raise ExperimentError(str(path), _line_of(text, key), key, err["msg"]) from None
