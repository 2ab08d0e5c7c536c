"""The model's own init of each parameter, read without drawing anything: the model's init routine run on the
``meta`` device under a recorder.

``keep`` and ``base`` rules are stated relative to the model's own init (its std at this width, at the base
width). A model built in the user's script and a base built on ``meta`` have no values to measure, so their
init routine is run again on ``meta`` — HuggingFace's ``init_weights()`` (its "already initialised" flags cleared
for the run and put back), else every module's ``reset_parameters()`` — and the last init call on each parameter
is recorded as an :class:`OwnInit`: its distribution and arguments, exact. After ``to_empty()`` the same record
re-draws the parameter (per tensor, seeded; shard by shard for an FSDP2 ``DTensor``).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel
from torch import nn
from torch.overrides import TorchFunctionMode


class OwnInit(BaseModel):
    """One parameter's own init: ``normal(mean, std)``, ``uniform(low, high)``, ``trunc_normal(mean, std, low,
    high)`` or ``const(value)`` (zeros, ones, fill)."""

    kind: Literal["normal", "uniform", "trunc_normal", "const"]
    mean: float = 0.0
    std: float = 0.0
    low: float = 0.0
    high: float = 0.0
    value: float = 0.0
    source: str = ""

    @property
    def std_of(self) -> float:
        if self.kind == "normal":
            return abs(self.std)
        if self.kind == "uniform":
            return abs(self.high - self.low) / math.sqrt(12.0)
        if self.kind == "trunc_normal":
            from .init_record import truncated_std  # noqa: PLC0415

            return truncated_std(self.std, self.low, self.high, self.mean)
        return 0.0

    def scaled(self, factor: float) -> "OwnInit":
        """The same init times ``factor`` > 0, as one draw (no second pass over the tensor): a normal's mean and
        std, a uniform's and a truncated normal's bounds, a constant scale with it."""
        return self.model_copy(update={"mean": self.mean * factor, "std": self.std * factor,
                                       "low": self.low * factor, "high": self.high * factor,
                                       "value": self.value * factor})

    def draw(self, tensor: torch.Tensor, generator: torch.Generator | None) -> None:
        with torch.no_grad():
            if self.kind == "normal":
                tensor.normal_(self.mean, self.std, generator=generator)
            elif self.kind == "uniform":
                tensor.uniform_(self.low, self.high, generator=generator)
            elif self.kind == "trunc_normal":
                nn.init.trunc_normal_(tensor, self.mean, self.std, self.low, self.high, generator=generator)
            else:
                tensor.fill_(self.value)


def _fans(t: torch.Tensor) -> tuple[int, int]:
    return nn.init._calculate_fan_in_and_fan_out(t) if t.dim() >= 2 else (t.numel(), t.numel())


def _describe(func, args: tuple, kwargs: dict) -> OwnInit | None:
    """An init call as an :class:`OwnInit`, or None when it is not one (orthogonal, a copy, an arithmetic op)."""
    t = args[0]
    name = getattr(func, "__name__", str(func))

    def arg(i: int, key: str, default):
        return kwargs.get(key, args[i] if len(args) > i else default)

    init = nn.init
    if func is init.normal_ or name == "normal_":
        return OwnInit(kind="normal", mean=float(arg(1, "mean", 0.0)), std=float(arg(2, "std", 1.0)), source=name)
    if func is init.uniform_:
        return OwnInit(kind="uniform", low=float(arg(1, "a", 0.0)), high=float(arg(2, "b", 1.0)), source=name)
    if name == "uniform_":
        return OwnInit(kind="uniform", low=float(arg(1, "from", 0.0)), high=float(arg(2, "to", 1.0)), source=name)
    if func is init.trunc_normal_:
        return OwnInit(kind="trunc_normal", mean=float(arg(1, "mean", 0.0)), std=float(arg(2, "std", 1.0)),
                       low=float(arg(3, "a", -2.0)), high=float(arg(4, "b", 2.0)), source=name)
    if func in (init.zeros_,) or name == "zero_":
        return OwnInit(kind="const", value=0.0, source=name)
    if func is init.ones_:
        return OwnInit(kind="const", value=1.0, source=name)
    if func is init.constant_ or name == "fill_":
        return OwnInit(kind="const", value=float(arg(1, "val" if func is init.constant_ else "value", 0.0)),
                       source=name)
    if func in (init.kaiming_uniform_, init.kaiming_normal_):
        fan_in, fan_out = _fans(t)
        fan = fan_in if arg(2, "mode", "fan_in") == "fan_in" else fan_out
        std = init.calculate_gain(arg(3, "nonlinearity", "leaky_relu"), arg(1, "a", 0)) / math.sqrt(max(fan, 1))
        if func is init.kaiming_normal_:
            return OwnInit(kind="normal", std=std, source=name)
        return OwnInit(kind="uniform", low=-math.sqrt(3.0) * std, high=math.sqrt(3.0) * std, source=name)
    if func in (init.xavier_uniform_, init.xavier_normal_):
        fan_in, fan_out = _fans(t)
        std = float(arg(1, "gain", 1.0)) * math.sqrt(2.0 / (fan_in + fan_out))
        if func is init.xavier_normal_:
            return OwnInit(kind="normal", std=std, source=name)
        return OwnInit(kind="uniform", low=-math.sqrt(3.0) * std, high=math.sqrt(3.0) * std, source=name)
    return None


_UNDERSTOOD = {"normal_", "uniform_", "trunc_normal_", "zeros_", "ones_", "constant_", "zero_", "fill_",
               "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_"}


class _Recorder(TorchFunctionMode):
    """Records the last in-place call on each tensor, by identity (``names``: which tensors, by id; None: all of
    them, for a build whose parameters do not exist yet)."""

    def __init__(self, names: dict[int, str] | None) -> None:
        super().__init__()
        self.names = names
        self.found: dict[Any, OwnInit | None] = {}
        self.alive: list[torch.Tensor] = []   # keeps recorded tensors alive, so that an id is not reused

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not args and isinstance(kwargs.get("tensor"), torch.Tensor):
            kwargs = dict(kwargs)
            args = (kwargs.pop("tensor"),)
        if args and isinstance(args[0], torch.Tensor) and (self.names is None or id(args[0]) in self.names):
            name = getattr(func, "__name__", "")
            if name.endswith("_") and not name.startswith("__"):
                key = self.names[id(args[0])] if self.names is not None else id(args[0])
                if self.names is None:
                    self.alive.append(args[0])
                self.found[key] = _describe(func, args, kwargs) if name in _UNDERSTOOD else None
        return func(*args, **kwargs)


def record_build(build: Callable[[], nn.Module]) -> tuple[nn.Module, dict[str, OwnInit | None]]:
    """Build a model (on ``meta`` when called under ``torch.device("meta")``) and record its own init as the
    build does it — including inits written in ``__init__`` (a GPT's N(0, 0.02²) tables) that no init routine
    repeats, and a tied table's own init rather than the discarded head's."""
    recorder = _Recorder(None)
    with recorder, torch.no_grad():
        model = build()
    found = {}
    for name, p in model.named_parameters():
        found.setdefault(name, recorder.found.get(id(p)))
    if hasattr(model, "init_weights") and hasattr(model, "_init_weights"):
        # HuggingFace skips its init on meta (and the record would hold the modules' own defaults): its routine,
        # run again outside the meta context, is the model's init
        routine = record_own_init(model)
        found.update({name: own for name, own in routine.items() if own is not None})
    return model, found


def default_routine(model: nn.Module) -> Callable[[], Any]:
    """The model's own init routine: HuggingFace's ``init_weights()``, else each module's ``reset_parameters()``."""
    if hasattr(model, "init_weights") and hasattr(model, "_init_weights"):
        return model.init_weights
    return lambda: [m.reset_parameters() for m in model.modules() if hasattr(m, "reset_parameters")]


def meta_skeleton(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every parameter and buffer on ``meta`` (the modules copied, no values): what the
    init routine of a model that has values can be run on without touching them."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def record_own_init(model: nn.Module, routine: Callable[[], Any] | None = None) -> dict[str, OwnInit | None]:
    """Run the model's init routine and record, per parameter name, its last init call. A model with values is
    read through a :func:`meta_skeleton` (nothing is drawn, its values stay)."""
    if any(p.device.type != "meta" for p in model.parameters()):
        return record_own_init(meta_skeleton(model), routine)
    names = {}
    for name, p in model.named_parameters():
        names.setdefault(id(p), name)
    flags = []
    for obj in (*model.parameters(), *model.modules()):   # HuggingFace skips what it has initialised once
        if getattr(obj, "_is_hf_initialized", False):
            flags.append(obj)
            obj._is_hf_initialized = False
    recorder = _Recorder(names)
    try:
        with recorder, torch.no_grad(), torch.device("cpu"):   # not meta: HuggingFace skips its init there
            (routine or default_routine(model))()
    finally:
        for obj in flags:
            obj._is_hf_initialized = True
    return {name: recorder.found.get(name) for name in dict.fromkeys(names.values())}


__all__ = ["OwnInit", "default_routine", "meta_skeleton", "record_build", "record_own_init"]
