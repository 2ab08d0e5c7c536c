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
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator,
)

MAX_FILE_BYTES = 1024 * 1024
"""An experiment file is at most 1 MiB."""
MAX_GRID = 1000
"""A learning-rate grid (explicit, log or adaptive) has at most 1,000 values."""
MAX_INT = 2**31 - 1
"""Sizes, counts and steps are at most 2^31 - 1."""
MAX_PROBE = 2048
"""Probe examples: each evaluation stores probe × classes logits and a probe × probe kernel per trial."""
SEED_LIMIT = 2**63
"""Seeds are in [0, 2^63): they are stored as SQLite integers."""
MAX_THREADS = 1024
"""Intra-op threads of a worker: at most 1,024."""
MAX_INPUT_DIM = 2**20
"""The synthetic tasks' input dimension: at most 2^20."""
MAX_TOP_K = 10_000
"""Eigenvalues per sharpness measurement, as the command line allows."""
MAX_TRACE_SAMPLES = 1_000_000
"""Hutchinson samples per measurement, as the command line allows."""
LR_RANGE = (1e-300, 1e300)
"""A learning rate lies where the spec language's numbers do (docs/language.md, "Limits")."""
MAX_NAME_BYTES = 200
"""The experiment's name (a folder name, out/NAME[_small]) and each spec name (in figure file names such as
consistency_NAME.png) are at most 200 bytes: file names are at most 255."""
SHARPNESS_OPTIMIZERS = ("sgd", "adam", "adamw", "adafactor", "adafactor_unscaled")
"""The optimizers whose learning-rate-preconditioned Hessian a sweep can measure (mupdsl.measure.sharpness)."""
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:[0-9]{1,4})?")
"""Device names: auto, cpu, mps, cuda or cuda:N."""


class ExperimentError(Exception):
    """A bad experiment file: ``file:line: key: message``."""

    def __init__(self, path: str, line: int, key: str, message: str) -> None:
        super().__init__(f"{path}:{line}: {key}: {message}")
        self.path, self.line, self.key, self.message = path, line, key, message

    def render(self) -> str:
        return f"{self.path}:{self.line}: error: {self.key}: {self.message}"


class LogGrid(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)
    min: float = Field(gt=0)
    max: float = Field(gt=0)
    num: int = Field(ge=2, le=MAX_GRID)

    @model_validator(mode="after")
    def _ordered(self) -> "LogGrid":
        if not self.min < self.max:
            raise ValueError(f"min ({self.min:g}) must be below max ({self.max:g})")
        return self

    def values(self) -> list[float]:
        a, b = math.log(self.min), math.log(self.max)
        return [math.exp(a + (b - a) * i / (self.num - 1)) for i in range(self.num)]


class AdaptiveGrid(BaseModel):
    """Seed 003's search: from a large η downward by ``factor`` until the first trial that converges, then
    ``below`` more steps under it (so each size gets its own window around its largest stable rate)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)
    start: float = Field(gt=0)
    factor: float = Field(2.0, gt=1)
    below: int = Field(4, ge=1, le=MAX_GRID)
    floor: float = Field(1e-6, gt=0)

    @model_validator(mode="after")
    def _bounded(self) -> "AdaptiveGrid":
        if self.floor > self.start:
            raise ValueError(f"floor ({self.floor:g}) must be at most start ({self.start:g})")
        steps = (math.log(self.start) - math.log(self.floor)) / math.log(self.factor)
        if not steps < MAX_GRID:
            raise ValueError(f"the search may visit {steps:,.0f} learning rates (from {self.start:g} down to "
                             f"{self.floor:g} by factors of {self.factor:g}); at most {MAX_GRID} are allowed: raise "
                             "factor or floor")
        return self

    def values(self) -> list[float]:
        """Every rate the search may visit, largest first."""
        out, lr = [], self.start
        while lr >= self.floor:
            out.append(lr)
            lr /= self.factor
        return out


class Measure(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)
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
    batch: Literal["fixed", "train", "full"] = "fixed"
    """The measurement batch: ``fixed`` — ``batch_size`` training examples drawn once (seeded) and kept throughout
    training (seed 002 App. J.1); ``train`` — ``batch_size`` examples drawn afresh at each measurement the way the
    training batches are drawn (uniformly, with replacement; its own generator, so training is unchanged);
    ``full`` — the whole training set, in micro-batches of ``batch_size`` (Cohen et al. 2022's full-batch setting)."""
    preconditioner: Literal["last", "next"] = "last"
    """Adam(W): ``last`` — D P⁻¹ with the optimizer's v̂ as it stands (the preconditioner of the last update,
    seed 002 App. J.1); ``next`` — the preconditioner of the update the measurement batch's gradient g would make,
    v ← β2 v + (1 − β2) g² (Cohen et al. 2022's ordering: P and H at the same point). ``next`` keeps directions
    that the training batches never moved (v̂ ≤ ε²) off Adam's lr/ε floor."""
    floor_warn: float = Field(0.25, ge=0, le=1)
    """Adam(W): warn when more than this share of the top eigenvector lies on coordinates at the ε floor."""
    probe: int = Field(0, ge=0)
    """Test examples (the first ``probe``) on which each trial's logits and the kernel of its readout's input
    features are recorded at every evaluation, for the consistency across widths of seed 004 (0: off)."""
    sharpness_lrs: list[float] = []
    """The learning rates of the grid whose trials are measured (empty: every trial). Seed 002 Fig. 1 shows the
    sharpness at one η0 per figure; measuring that rate densely, on a large batch, costs a fraction of measuring
    every trial of the grid."""

    @field_validator("sharpness_every", "top_k", "eval_every", "batch_size", "trace_samples", "probe")
    @classmethod
    def _bounded(cls, value: int, info) -> int:
        limit = {"top_k": MAX_TOP_K, "trace_samples": MAX_TRACE_SAMPLES, "probe": MAX_PROBE}.get(info.field_name,
                                                                                                 MAX_INT)
        if value > limit:
            raise ValueError(f"{info.field_name} is at most {limit:,}")
        return value


def _lrs_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "adaptive" if "start" in value else "grid"
    if isinstance(value, AdaptiveGrid):
        return "adaptive"
    if isinstance(value, LogGrid):
        return "grid"
    return "list"


Lrs = Annotated[
    Union[Annotated[list[float], Tag("list")], Annotated[LogGrid, Tag("grid")],
          Annotated[AdaptiveGrid, Tag("adaptive")]],
    Discriminator(_lrs_kind),
]
"""An explicit list, a log grid ``{min, max, num}`` or an adaptive search ``{start, factor, below, floor}``."""


def _unique(values: list, what: str) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise ValueError(f"{what} {v!r} is listed twice")
        seen.add(v)


def _file_name_part(text: str, what: str) -> str:
    if not text.strip():
        raise ValueError(f"{what} is empty")
    if len(text.encode("utf-8")) > MAX_NAME_BYTES:
        raise ValueError(f"{what} is {len(text.encode('utf-8'))} bytes long; at most {MAX_NAME_BYTES} (it names files)")
    if "\x00" in text or any(ord(ch) < 32 for ch in text):
        raise ValueError(f"{what} contains a control character")
    return text


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

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
    optimizer: Literal["sgd", "adam", "adamw", "signsgd", "lion", "adafactor", "adafactor_unscaled", "muon"] = "sgd"
    """SignSGD, Lion and Adafactor train in vmapped groups; Muon one trial at a time (docs/optimizers.md). The
    preconditioned sharpness is defined for sgd, adam, adamw and adafactor(_unscaled), so the others need
    sharpness_every = 0."""
    lrs: Lrs
    seeds: list[int] = [0]
    gammas: list[float] = []
    gamma_name: str = "gamma0"
    steps: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=1)
    warmup: int = Field(0, ge=0)
    """Steps of linear warm-up: the rates rise as (t+1)/warmup × their planned values."""
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    """After the warm-up: constant rates, or a cosine / linear decay to ``decay_to`` × the peak at the last step
    (:class:`mupdsl.train.Schedule`). The sharpness is compared with the EoS line of the rate in force."""
    decay_to: float = Field(0.0, ge=0.0, le=1.0)
    """The end of a cosine or linear decay, as a fraction of the peak rate."""
    ungated: list[str] = []
    device: str = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    coordcheck_widths: list[int] = []
    threads: int | None = Field(None, ge=1)
    """Intra-op threads of each worker (default: the cores this process may run on — its CPU affinity, which
    Slurm and containers narrow — not the machine's count, which would oversubscribe them)."""
    group: bool = True
    """Train the trials of one (spec, width, γ) as one vmapped model (see sweep/trial.py)."""
    measure: Measure = Measure()
    num_samples: int = Field(4000, ge=100)

    @field_validator("widths")
    @classmethod
    def _positive(cls, widths: list[int]) -> list[int]:
        if any(w <= 0 for w in widths):
            raise ValueError("widths must be positive")
        if any(w > MAX_INT for w in widths):
            raise ValueError(f"widths are at most {MAX_INT}")
        _unique(widths, "width")
        return sorted(widths)

    @field_validator("depths", "coordcheck_widths")
    @classmethod
    def _positive_unique(cls, values: list[int], info) -> list[int]:
        if any(not 1 <= v <= MAX_INT for v in values):
            raise ValueError(f"{info.field_name} must be positive integers (at most {MAX_INT})")
        _unique(values, info.field_name.rstrip("s").replace("_width", " width"))
        return values

    @field_validator("base_width", "depth", "base_depth", "input_dim", "context", "steps", "batch_size", "warmup",
                     "threads", "num_samples")
    @classmethod
    def _bounded_int(cls, value: int | None, info) -> int | None:
        limit = {"threads": MAX_THREADS, "input_dim": MAX_INPUT_DIM}.get(info.field_name, MAX_INT)
        if value is not None and value > limit:
            raise ValueError(f"{info.field_name} is at most {limit:,}")
        if value is not None and value < 1 and info.field_name in ("base_width", "depth", "base_depth"):
            raise ValueError(f"{info.field_name} must be at least 1")
        return value

    @field_validator("lrs")
    @classmethod
    def _learning_rates(cls, lrs):
        if isinstance(lrs, list):
            if not lrs:
                raise ValueError("give at least one learning rate")
            if len(lrs) > MAX_GRID:
                raise ValueError(f"{len(lrs)} learning rates; at most {MAX_GRID}")
            bad = [lr for lr in lrs if not lr > 0]
            if bad:
                raise ValueError(f"learning rates must be positive, not {bad[0]:g}")
            _unique(lrs, "learning rate")
        values = lrs if isinstance(lrs, list) else lrs.values()
        out = [lr for lr in values if not LR_RANGE[0] <= lr <= LR_RANGE[1]]
        if out:
            raise ValueError(f"learning rate {out[0]:g} is out of range: between {LR_RANGE[0]:g} and "
                             f"{LR_RANGE[1]:g}")
        if not isinstance(lrs, list):
            _unique([float(f"{v:.12g}") for v in values], "learning rate (of the grid, to 12 digits)")
        return lrs

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("give at least one seed")
        bad = [s for s in seeds if not 0 <= s < SEED_LIMIT]
        if bad:
            raise ValueError(f"seed {bad[0]} is out of range: seeds are in [0, 2^63)")
        _unique(seeds, "seed")
        return seeds

    @field_validator("gammas")
    @classmethod
    def _gammas(cls, gammas: list[float]) -> list[float]:
        bad = [g for g in gammas if not g > 0]
        if bad:
            raise ValueError(f"gammas must be positive, not {bad[0]:g}")
        if len(gammas) > MAX_GRID:
            raise ValueError(f"{len(gammas)} gammas; at most {MAX_GRID}")
        _unique(gammas, "gamma")
        return gammas

    @field_validator("gamma_name")
    @classmethod
    def _gamma_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"'{name}' is not a hyperparameter name")
        return name

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        _file_name_part(name, "the name")
        if "/" in name or "\\" in name or name in (".", ".."):
            raise ValueError("the name is a folder name (out/NAME): no '/', '\\', '.' or '..'")
        return name

    @field_validator("specs")
    @classmethod
    def _specs(cls, specs: list[str]) -> list[str]:
        from ..spec import find_spec_file, preset_names  # noqa: PLC0415
        from ..spec.errors import did_you_mean  # noqa: PLC0415

        for spec in specs:
            _file_name_part(spec, f"spec '{spec[:40]}'")
            if find_spec_file(spec) is None:
                hint = did_you_mean(Path(spec).stem, preset_names())
                raise ValueError(f"no spec file or preset '{spec}'" + (f" ({hint})" if hint else ""))
        _unique(specs, "spec")
        return specs

    @field_validator("measure")
    @classmethod
    def _measurable(cls, measure: Measure, info) -> Measure:
        optimizer = info.data.get("optimizer", "sgd")
        if optimizer not in SHARPNESS_OPTIMIZERS and (measure.sharpness_every or measure.ntk):
            raise ValueError(f"optimizer {optimizer} has no preconditioned sharpness (defined for "
                             f"{', '.join(SHARPNESS_OPTIMIZERS)}): set sharpness_every = 0 and ntk = false")
        return measure

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if not DEVICE_PATTERN.fullmatch(device):
            raise ValueError(f"unknown device '{device}': use auto, cpu, mps, cuda or cuda:N")
        return device

    @model_validator(mode="after")
    def _check(self) -> "Experiment":
        unknown = set(self.ungated) - set(self.specs)
        if unknown:
            raise ValueError(f"ungated names specs that are not in specs: {', '.join(sorted(unknown))}")
        if self.warmup >= self.steps and self.warmup:
            raise ValueError(f"warmup ({self.warmup} steps) must be shorter than the run (steps = {self.steps})")
        if self.decay_to and self.schedule == "constant":
            raise ValueError("decay_to sets the end of a decay: give schedule = \"cosine\" or \"linear\" (or remove "
                             "decay_to)")
        extras = [k for k in ("trace_samples", "directional") if getattr(self.measure, k)]
        if extras and not self.measure.sharpness_every:
            raise ValueError(f"[measure] {' and '.join(extras)} {'are' if len(extras) > 1 else 'is'} taken at each "
                             "sharpness measurement, but sharpness_every = 0 measures none: set sharpness_every "
                             f"(the optimizer must have a sharpness: {', '.join(SHARPNESS_OPTIMIZERS)}), or remove "
                             f"{' and '.join(extras)}")
        chosen = self.measure.sharpness_lrs
        if chosen and not self.measure.sharpness_every:
            raise ValueError("[measure] sharpness_lrs chooses which trials are measured, but sharpness_every = 0 "
                             "measures none: set sharpness_every, or remove sharpness_lrs")
        grid = self.lr_values()
        snapped = []
        for lr in chosen:
            rate = grid_rate(lr, grid)
            if rate is None:
                near = min(grid, key=lambda v: abs(math.log(v) - math.log(lr))) if lr > 0 else grid[0]
                raise ValueError(f"[measure] sharpness_lrs: {lr!r} is not a learning rate of the grid (nearest: "
                                 f"{near!r})")
            snapped.append(rate)
        if snapped:   # the grid's own values, sorted, once each: how they are written does not change trial ids
            self.measure = self.measure.model_copy(update={"sharpness_lrs": sorted(set(snapped))})
        return self

    @field_validator("measure")
    @classmethod
    def _measure_fits_optimizer(cls, m: Measure, info) -> Measure:
        optimizer = info.data.get("optimizer", "sgd")
        if optimizer not in ("adam", "adamw") and m.preconditioner != "last":
            raise ValueError(f"preconditioner = \"{m.preconditioner}\" chooses Adam's v̂, but optimizer is "
                             f"{optimizer} (remove the key)")
        return m

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


RATE_MATCH = 1e-3
"""How close (relative) a rate written in a file must be to a grid's rate to name it: a log grid's values are not
round, and a user copies them from a report (3 digits) or an error message."""


def grid_rate(lr: float, grid: list[float]) -> float | None:
    """The rate of ``grid`` that ``lr`` names — the nearest, within :data:`RATE_MATCH` relative and nearer than half
    the gap to its neighbours — or None."""
    if not lr > 0 or not grid:
        return None
    ordered = sorted(grid)
    logs = [math.log(v) for v in ordered]
    i = min(range(len(ordered)), key=lambda k: abs(logs[k] - math.log(lr)))
    gaps = [abs(logs[j] - logs[i]) for j in (i - 1, i + 1) if 0 <= j < len(ordered)]
    tolerance = min([math.log1p(RATE_MATCH)] + [g / 2 for g in gaps])
    return ordered[i] if abs(logs[i] - math.log(lr)) <= tolerance else None


def small(exp: Experiment) -> Experiment:
    """The ``--small`` version of a GPU-sized experiment, for CPU tests: two narrow widths, few steps, lrs and
    seeds, and a small dataset."""
    lrs = exp.lr_values()
    keep = lrs[:: max(1, len(lrs) // 4)][:5]
    return exp.model_copy(update={
        "widths": [w for w in exp.widths if w <= 128][:2] or [16, 32], "steps": min(exp.steps, 20),
        "warmup": min(exp.warmup, 5),
        "lrs": keep, "seeds": exp.seeds[:1], "num_samples": min(exp.num_samples, 600),
        "gammas": sorted(sorted(exp.gammas, key=lambda g: abs(math.log(g)))[:3]),
        "coordcheck_widths": [64, 128, 256, 512], "measure": exp.measure.model_copy(update={
            "sharpness_every": min(exp.measure.sharpness_every, 5) if exp.measure.sharpness_every else 0,
            "eval_every": 10, "batch_size": min(exp.measure.batch_size, 64),
            "sharpness_lrs": _nearest_kept(exp.measure.sharpness_lrs, keep)})})


def _nearest_kept(chosen: list[float], kept: list[float]) -> list[float]:
    """Each chosen rate moved to the nearest rate a smaller grid keeps (so that a small run still measures a few
    rates, not every trial)."""
    return sorted({min(kept, key=lambda v: abs(math.log(v) - math.log(lr))) for lr in chosen})


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot be used on this machine (no CUDA, cuda:9 on a machine with one GPU), or None."""
    if not DEVICE_PATTERN.fullmatch(device):
        return f"unknown device '{device}': use auto, cpu, mps, cuda or cuda:N"
    if device in ("auto", "cpu"):
        return None
    import torch  # noqa: PLC0415

    if device == "mps":
        available = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        return None if available else "device 'mps' is not available on this machine"
    if not torch.cuda.is_available():
        return f"device '{device}': CUDA is not available on this machine (use cpu or auto)"
    count = torch.cuda.device_count()
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= count:
        return f"device '{device}' does not exist: this machine has {count} CUDA device{'s' if count != 1 else ''} " \
               f"(cuda:0{f' … cuda:{count - 1}' if count > 1 else ''})"
    return None
