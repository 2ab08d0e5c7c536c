"""The std of each parameter's own (default) init, read from the init calls the model makes while it is built.

``keep`` keeps a model's init; ``base`` rescales it to the std it has at the base width. Both need that std
exactly — a sample std of a 64-element bias is off by ~9% — so the in-place RNG and fill calls made during
construction are recorded (``normal_``, ``uniform_`` — which ``kaiming_uniform_`` uses —, ``fill_``, ``zero_``,
scalings; out of place, ``torch.randn(…) * c`` and its kin), under a ``TorchFunctionMode``, and the distribution's
std is computed from their arguments. A parameter whose last init op is not understood (e.g. ``trunc_normal_``'s
``erfinv_``) falls back to its sample std.

The same recording gives an :class:`InitReplay`: the in-place init calls, in order, on the parameters. After the
same ``torch.manual_seed`` they redraw exactly what building the model again would, without building it (no module
construction, no allocation, no copy) — how a coordinate check re-draws a width for its next seed. A build whose
random numbers are not all drawn by such calls (``torch.randn`` into a parameter, a random buffer, an init of a
slice, a parameter computed from another) has no replay; it is built again instead.
"""

from __future__ import annotations

import contextlib

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

_T = torch.Tensor


def _key(t: torch.Tensor) -> tuple | None:
    if t.device.type == "meta":
        return None
    try:
        return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
    except (RuntimeError, NotImplementedError):
        return None


def _fan(t: torch.Tensor, mode: str) -> int:
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(t)
    return fan_in if mode == "fan_in" else fan_out


def truncated_std(std: float, a: float, b: float, mean: float) -> float:
    """Std of N(mean, std²) truncated to [a, b]."""
    alpha, beta = (a - mean) / std, (b - mean) / std
    phi = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    z = cdf(beta) - cdf(alpha)
    var = 1 + (alpha * phi(alpha) - beta * phi(beta)) / z - ((phi(alpha) - phi(beta)) / z) ** 2
    return std * math.sqrt(max(var, 0.0))


def _init_fn_std(func, args, kwargs) -> float | None | type(...):
    """Std set by a ``torch.nn.init`` function (its inner tensor calls are not seen by the mode), or ... if not one."""
    t = args[0]

    def arg(i: int, name: str, default):
        return kwargs.get(name, args[i] if len(args) > i else default)

    init = nn.init
    if func is init.normal_:
        return abs(float(arg(2, "std", 1.0)))
    if func is init.uniform_:
        return abs(float(arg(2, "b", 1.0)) - float(arg(1, "a", 0.0))) / math.sqrt(12.0)
    if func is init.trunc_normal_:
        return truncated_std(float(arg(2, "std", 1.0)), float(arg(3, "a", -2.0)), float(arg(4, "b", 2.0)),
                              float(arg(1, "mean", 0.0)))
    if func in (init.constant_, init.zeros_, init.ones_):
        return 0.0
    if func in (init.kaiming_uniform_, init.kaiming_normal_):
        gain = init.calculate_gain(arg(3, "nonlinearity", "leaky_relu"), arg(1, "a", 0))
        return gain / math.sqrt(_fan(t, arg(2, "mode", "fan_in")))
    if func in (init.xavier_uniform_, init.xavier_normal_):
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(t)
        return float(arg(1, "gain", 1.0)) * math.sqrt(2.0 / (fan_in + fan_out))
    if getattr(func, "__module__", "") == "torch.nn.init":
        return None  # orthogonal_, sparse_, eye_, dirac_: sample std
    return ...


_RANDOM_FACTORIES = frozenset({
    "rand", "randn", "randint", "randperm", "normal", "bernoulli", "multinomial", "poisson", "rand_like",
    "randn_like", "randint_like", "dropout", "feature_dropout", "alpha_dropout", "native_dropout", "rrelu"})
_CONSTANT_FACTORIES = frozenset({
    "zeros", "ones", "full", "tensor", "as_tensor", "zeros_like", "ones_like", "full_like", "arange", "linspace",
    "logspace", "eye"})
_DETERMINISTIC_INPLACE = frozenset({
    "fill_", "zero_", "mul_", "div_", "add_", "sub_", "clamp_", "clamp_min_", "clamp_max_", "copy_", "constant_",
    "zeros_", "ones_", "eye_", "dirac_", "requires_grad_", "set_", "resize_", "share_memory_"})


@dataclass(frozen=True)
class InitReplay:
    """The in-place init calls a build made, in order: (function, parameter name, the other arguments, keyword
    arguments, and for a tensor that is no parameter of the model — a weight replaced by a tied one — its shape,
    dtype and device, to draw into scratch so that the random stream advances as in the build). Calling it after
    ``torch.manual_seed(s)`` gives the parameters the values a build after ``torch.manual_seed(s)`` gives them."""

    calls: tuple[tuple[Callable, str | None, tuple, dict[str, Any], tuple | None], ...]

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> None:
        for fn, name, args, kwargs, scratch in self.calls:
            target = model.get_parameter(name) if name is not None else torch.empty(
                scratch[0], dtype=scratch[1], device=scratch[2])
            fn(target, *args, **kwargs)


_SCALINGS = {"mul": 1, "__mul__": 1, "__rmul__": 1, "div": -1, "__truediv__": -1}
_SHIFTS = frozenset({"add", "sub", "__add__", "__radd__", "__sub__", "__rsub__", "__neg__", "neg"})


def _made_std(name: str, args: tuple, kwargs: dict, stds: dict[tuple, float | None]) -> float | None | type(...):
    """Std of a tensor made out of place — ``torch.randn(n) * 0.02``, a ViT's positional embedding — or ... when
    unknown: a standard normal or uniform draw, scaled or shifted by Python numbers."""
    if name in ("randn", "randn_like"):
        return 1.0
    if name in ("rand", "rand_like"):
        return 1.0 / math.sqrt(12.0)
    if name in ("zeros", "ones", "full", "zeros_like", "ones_like", "full_like"):
        return 0.0
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    numbers = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
    if len(tensors) != 1 or kwargs or len(tensors) + len(numbers) != len(args):
        return ...
    key = _key(tensors[0])
    std = stds.get(key) if key is not None else None
    if std is None:
        return ...
    if name in _SHIFTS:
        return std
    if name in _SCALINGS and numbers:
        factor = float(numbers[0])
        if _SCALINGS[name] < 0 and isinstance(args[0], torch.Tensor):
            return std / abs(factor) if factor else ...
        if _SCALINGS[name] > 0:
            return std * abs(factor)
    return ...


class _Recorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.stds: dict[tuple, float | None] = {}
        self.calls: list[tuple[Callable, tuple, tuple, dict[str, Any], tuple]] = []  # fn, key, args, kwargs, like
        self.created: dict[tuple, str] = {}       # tensor key -> name of the factory that made it
        self.assigned: set[int | None] = set()     # storages written by indexing (t[i] = …)
        self.foreign_random = False               # random numbers drawn other than in place

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in _RANDOM_FACTORIES:
            self.foreign_random = True
        if not name.endswith("_") or name.startswith("__"):
            if isinstance(out, torch.Tensor) and not name.startswith("__get"):
                key = _key(out)
                if key is not None:
                    self.created[key] = name
                    std = _made_std(name, args, kwargs, self.stds)
                    if std is not ...:
                        self.stds[key] = std
                    elif not any(isinstance(a, torch.Tensor) and storage_pointer(a) == key[0] for a in args):
                        self.stds.pop(key, None)  # new memory where a freed tensor's init was recorded
            if name == "__setitem__" and args and isinstance(args[0], torch.Tensor):
                self.assigned.add(storage_pointer(args[0]))
            return out
        if not args and isinstance(kwargs.get("tensor"), torch.Tensor):  # nn.init functions pass it by name
            kwargs = dict(kwargs)
            args = (kwargs.pop("tensor"),)
        if not args or not isinstance(args[0], torch.Tensor):
            return out
        key = _key(args[0])
        if key is None:
            return out
        self.calls.append((func, key, tuple(args[1:]), dict(kwargs), (args[0].shape, args[0].dtype, args[0].device)))
        from_init = _init_fn_std(func, args, kwargs)
        if from_init is not ...:
            self.stds[key] = from_init
            return out
        params = list(args[1:]) + list(kwargs.values())
        if func is _T.normal_:
            std = kwargs.get("std", args[2] if len(args) > 2 else 1.0)
            self.stds[key] = abs(float(std))
        elif func is _T.uniform_:
            low = kwargs.get("from", args[1] if len(args) > 1 else 0.0)
            high = kwargs.get("to", args[2] if len(args) > 2 else 1.0)
            self.stds[key] = abs(float(high) - float(low)) / math.sqrt(12.0)
        elif func in (_T.fill_, _T.zero_):
            self.stds[key] = 0.0
        elif func in (_T.mul_, _T.div_) and params and isinstance(params[0], (int, float)):
            if self.stds.get(key) is not None:
                factor = float(params[0]) if func is _T.mul_ else 1.0 / float(params[0])
                self.stds[key] = self.stds[key] * abs(factor)
        elif func in (_T.add_, _T.sub_) and params and isinstance(params[0], (int, float)):
            pass  # a shift leaves the std alone
        elif func is _T.copy_ or name in ("erfinv_", "clamp_", "exp_", "normal", "orthogonal_", "bernoulli_",
                                          "random_", "exponential_", "cauchy_", "log_normal_", "geometric_"):
            self.stds[key] = None
        return out

    def replay(self, model: nn.Module) -> InitReplay | None:
        """The calls that redraw ``model``'s parameters exactly, or None where replaying them could differ."""
        if self.foreign_random:
            return None  # random numbers drawn into a new tensor (torch.randn(...)), not in place
        names: dict[tuple, str] = {}
        for name, p in model.named_parameters():
            key = _key(p)
            if key is None:
                return None
            names.setdefault(key, name)
        storages = {key[0] for key in names}
        if storages & self.assigned:
            return None
        calls = []
        for fn, key, args, kwargs, like in self.calls:
            if any(isinstance(a, (torch.Tensor, torch.Generator)) for a in (*args, *kwargs.values())):
                return None  # a value copied or derived from another tensor, or a private generator
            name = names.get(key)
            if name is not None:
                calls.append((fn, name, args, kwargs, None))
            elif key[0] in storages:
                return None  # an init of a slice of a parameter
            elif getattr(fn, "__name__", "") not in _DETERMINISTIC_INPLACE:
                calls.append((fn, None, args, kwargs, like))  # random numbers drawn into a discarded tensor
        touched = {name for _, name, _, _, _ in calls}
        for key, name in names.items():
            if name not in touched and self.created.get(key) not in _CONSTANT_FACTORIES:
                return None  # a parameter whose value was computed, not initialised in place
        return InitReplay(tuple(calls))


def storage_pointer(t: torch.Tensor) -> int | None:
    """Address of the memory under ``t`` (shared by its views), or None for a tensor without storage (a functorch
    wrapper, a sparse tensor)."""
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


def build_recording_stds(build: Callable[[], nn.Module]
                         ) -> tuple[nn.Module, dict[str, float | None], InitReplay | None]:
    """Build a model and return it with the std of each parameter's init (by every name it has) and, where
    its random init can be redrawn in place, the :class:`InitReplay` that does so."""
    recorder = _Recorder()
    with recorder:
        model = build()
    stds: dict[str, float | None] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        key = _key(p)
        std = recorder.stds.get(key) if key is not None else None
        if std is None and key is not None:
            std = float(p.detach().double().std()) if p.numel() > 1 else 0.0
        stds[name] = std
    return model, stds, recorder.replay(model)


def preserved_rng() -> contextlib.AbstractContextManager:
    """A block whose seeding leaves the caller's random state as it found it: torch's CPU generator and, where CUDA
    is available, every CUDA device's (``torch.manual_seed`` seeds them all)."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    return torch.random.fork_rng(devices=devices)
