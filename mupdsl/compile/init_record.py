"""The std of each parameter's own (default) init, read from the init calls the model makes while it is built.

``keep`` keeps a model's init; ``base`` rescales it to the std it has at the base width. Both need that std
exactly — a sample std of a 64-element bias is off by ~9% — so the in-place RNG and fill calls made during
construction are recorded (``normal_``, ``uniform_`` — which ``kaiming_uniform_`` uses —, ``fill_``, ``zero_``,
scalings), under a ``TorchFunctionMode``, and the distribution's std is computed from their arguments. A parameter
whose last init op is not understood (e.g. ``trunc_normal_``'s ``erfinv_``) falls back to its sample std.
"""

from __future__ import annotations

import math
from typing import Callable

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


def _truncated_std(std: float, a: float, b: float, mean: float) -> float:
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
        return _truncated_std(float(arg(2, "std", 1.0)), float(arg(3, "a", -2.0)), float(arg(4, "b", 2.0)),
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


class _Recorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.stds: dict[tuple, float | None] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if not name.endswith("_") or name.startswith("__"):
            return out
        if not args and isinstance(kwargs.get("tensor"), torch.Tensor):  # nn.init functions pass it by name
            kwargs = dict(kwargs)
            args = (kwargs.pop("tensor"),)
        if not args or not isinstance(args[0], torch.Tensor):
            return out
        key = _key(args[0])
        if key is None:
            return out
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


def build_recording_stds(build: Callable[[], nn.Module]) -> tuple[nn.Module, dict[str, float | None]]:
    """Build a model and return it with the std of each parameter's init (by every name it has)."""
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
    return model, stds
