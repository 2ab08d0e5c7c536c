"""The runtime multipliers a plan needs on the user's module, as forward hooks (design.md §3).

Each hook is a small picklable object (the model pickles and deep-copies with its hooks; ``state_dict`` holds no
hook data, so a reloaded model gets its plan applied again). Hooks are plain module hooks: ``torch.compile``
traces them (register them before compiling: dynamo does not watch hooks added later), FSDP2 and DDP call them,
activation checkpointing re-runs them with the block. Factors are kept per device and dtype, so a bf16 autocast
output stays bf16.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .plan import RuntimeMult


class RuntimeHook:
    """Base of mupdsl's hooks: what :func:`remove` recognises on a module."""

    mult: RuntimeMult

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.mult.kind} × {self.mult.factor:.6g}: {self.mult.reason})"


class Scale(RuntimeHook):
    """Forward hook: the module's output (at ``path``) times the factor, on some features only when given."""

    def __init__(self, mult: RuntimeMult) -> None:
        self.mult = mult
        self._vectors: dict[tuple, torch.Tensor] = {}

    def _factor(self, value: torch.Tensor):
        features = self.mult.features
        if features is None:
            return self.mult.factor
        key = (value.device, value.dtype, value.shape[self.mult.dim])
        vector = self._vectors.get(key)
        if vector is None:
            vector = torch.ones(key[2], dtype=value.dtype, device=value.device)
            vector[torch.as_tensor(features, device=value.device)] = self.mult.factor
            shape = [1] * value.ndim
            shape[self.mult.dim] = key[2]
            vector = vector.reshape(shape)
            self._vectors[key] = vector
        return vector

    def _scale(self, value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"mupdsl: expected a tensor to multiply ({self.mult.reason}), got {type(value).__name__}")
        return value * self._factor(value)

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> Any:
        path = list(self.mult.path)
        if not path and not isinstance(output, torch.Tensor):
            path = [_first_tensor(output)]
        return _replace(output, path, self._scale)

    def __getstate__(self):
        return {"mult": self.mult, "_vectors": {}}


class ScaleInput(RuntimeHook):
    """Forward pre-hook: the module's first argument times the factor (a weight multiplier on an op with a bias)."""

    def __init__(self, mult: RuntimeMult) -> None:
        self.mult = mult

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (args[0] * self.mult.factor, *args[1:])


class SkipScale(RuntimeHook):
    """Forward hook on a residual block ``x + branch(x)``: its output becomes ``tau·x + branch(x)``."""

    def __init__(self, mult: RuntimeMult) -> None:
        self.mult = mult

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + (self.mult.factor - 1.0) * args[0]


class ScaledAttention(RuntimeHook):
    """An ``nn.MultiheadAttention``'s forward with its query multiplied (its logit scale changed): the query is a
    slice of ``in_proj_weight`` computed inside the module's forward, where no hook reaches, so the module's own
    forward is replaced, on this instance only, by the same computation with the scale
    (:func:`mupdsl.compile.torch_nn.multihead_attention_forward`)."""

    def __init__(self, mult: RuntimeMult, module: nn.Module) -> None:
        self.mult = mult
        self.module = module

    def __call__(self, *args, **kwargs):
        from .torch_nn import multihead_attention_forward  # noqa: PLC0415 - torch_nn imports torch.fx

        return multihead_attention_forward(self.module, *args, **kwargs, training=self.module.training,
                                           q_scale=self.mult.factor)


class WithoutFastPath(RuntimeHook):
    """An ``nn.TransformerEncoderLayer`` (or ``nn.TransformerEncoder``) whose inference fast path would bypass the
    plan carried on its attention: its forward, on this instance, is the same computation without the fast path."""

    def __init__(self, mult: RuntimeMult, module: nn.Module) -> None:
        self.mult = mult
        self.module = module

    def __call__(self, *args, **kwargs):
        from .torch_nn import fast_path_free_forward  # noqa: PLC0415

        return fast_path_free_forward(self.module)(*args, **kwargs)


class Center(RuntimeHook):
    """Forward hook on the model: ``f(x; θ) − f(x; θ₀)`` with θ₀ the initial parameters (seed 003 App. A), held
    here, not in the ``state_dict``; f(x; θ₀) is a constant of training and is computed without a graph."""

    def __init__(self, mult: RuntimeMult, initial: dict[str, torch.Tensor]) -> None:
        self.mult = mult
        self.initial = {k: v.detach().clone() for k, v in initial.items()}
        self._inside = False

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if self._inside:
            return output
        self._inside = True
        try:
            first = next(iter(self.initial.values()), None)
            device = _device_of(output)
            if first is not None and device is not None and first.device != device:
                self.initial = {k: v.to(device) for k, v in self.initial.items()}
            with torch.no_grad():
                reference = torch.func.functional_call(module, self.initial, args, kwargs, strict=False)
        finally:
            self._inside = False
        return _subtract(output, reference)

    def __getstate__(self):
        return {"mult": self.mult, "initial": self.initial, "_inside": False}


def _device_of(value: Any) -> torch.device | None:
    for leaf in torch.utils._pytree.tree_leaves(value):
        if isinstance(leaf, torch.Tensor):
            return leaf.device
    return None


def _subtract(a: Any, b: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return a - b
    if isinstance(a, tuple):
        return type(a)(_subtract(x, y) for x, y in zip(a, b)) if not hasattr(a, "_fields") else \
            type(a)(*(_subtract(x, y) for x, y in zip(a, b)))
    if isinstance(a, list):
        return [_subtract(x, y) for x, y in zip(a, b)]
    if isinstance(a, dict) or hasattr(a, "keys"):
        for key in list(a.keys()):
            a[key] = _subtract(a[key], b[key])
        return a
    return a


def _first_tensor(output: Any) -> int | str:
    if isinstance(output, (tuple, list)):
        for i, value in enumerate(output):
            if isinstance(value, torch.Tensor):
                return i
    if hasattr(output, "keys"):
        for key in output.keys():
            if isinstance(output[key], torch.Tensor):
                return key
    raise TypeError(f"mupdsl: no tensor in a module output of type {type(output).__name__}")


def _replace(value: Any, path: list, fn) -> Any:
    if not path:
        return fn(value)
    key, rest = path[0], path[1:]
    if isinstance(value, tuple):
        items = list(value)
        items[key] = _replace(items[key], rest, fn)
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, list):
        items = list(value)
        items[key] = _replace(items[key], rest, fn)
        return items
    if isinstance(value, dict) or hasattr(value, "keys"):  # a dict or a HuggingFace ModelOutput
        if isinstance(key, int) and not isinstance(value, dict):
            key = list(value.keys())[key]
        value[key] = _replace(value[key], rest, fn)
        return value
    raise TypeError(f"mupdsl: cannot find {path} in a model output of type {type(value).__name__}")


def install(model: nn.Module, runtime: list[RuntimeMult], initial: dict[str, torch.Tensor] | None = None
            ) -> list[RemovableHandle]:
    """Register the plan's runtime multipliers on ``model``'s modules; returns the handles."""
    handles = []
    for mult in runtime:
        module = model.get_submodule(mult.module) if mult.module else model
        if mult.kind == "output":
            handles.append(module.register_forward_hook(Scale(mult)))
        elif mult.kind == "input":
            handles.append(module.register_forward_pre_hook(ScaleInput(mult)))
        elif mult.kind == "skip":
            handles.append(module.register_forward_hook(SkipScale(mult)))
        elif mult.kind == "center":
            handles.append(module.register_forward_hook(Center(mult, initial or {}), with_kwargs=True))
        elif mult.kind == "attention":
            if not isinstance(module, nn.MultiheadAttention):
                raise ValueError(f"{mult.module!r}: an attention scale change is carried on nn.MultiheadAttention only")
            module.forward = ScaledAttention(mult, module)
        else:
            raise ValueError(f"unknown runtime multiplier kind {mult.kind!r}")
        _without_fast_paths(model, mult)
    return handles


def _without_fast_paths(model: nn.Module, mult: RuntimeMult) -> None:
    """The encoder layers and encoders around a module carrying a plan lose their inference fast path (fused
    kernels that would bypass the module and its hooks)."""
    from .torch_nn import fast_path_free_forward  # noqa: PLC0415

    parts = mult.module.split(".")
    for i in range(len(parts)):
        path = ".".join(parts[:i])
        module = model.get_submodule(path) if path else model
        if fast_path_free_forward(module) is not None and not isinstance(module.__dict__.get("forward"), RuntimeHook):
            module.forward = WithoutFastPath(RuntimeMult(module=path, kind="fast_path", factor=1.0,
                                                         reason=f"keeps {mult.module!r}'s plan in inference"), module)


def installed(model: nn.Module) -> list[tuple[str, RuntimeHook]]:
    """The mupdsl hooks on ``model`` (a model that carries a plan already)."""
    found = []
    for name, module in model.named_modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            found += [(name, h) for h in hooks.values() if isinstance(h, RuntimeHook)]
        if isinstance(module.__dict__.get("forward"), RuntimeHook):
            found.append((name, module.__dict__["forward"]))
    return found


def remove(model: nn.Module) -> int:
    """Remove every mupdsl hook from ``model``; returns how many."""
    count = 0
    for module in model.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            for key in [k for k, h in hooks.items() if isinstance(h, RuntimeHook)]:
                del hooks[key]
                module._forward_hooks_with_kwargs.pop(key, None)
                count += 1
        if isinstance(module.__dict__.get("forward"), RuntimeHook):
            del module.forward   # back to the class's forward
            count += 1
    return count


@contextlib.contextmanager
def suspended(model: nn.Module):
    """Run without the plan's hooks and forward overrides (the reference graph shares leaf modules — a Dropout, a
    BatchNorm — with the model, and writes the multipliers out itself); everything is put back as it was."""
    saved = []
    for module in model.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            if any(isinstance(h, RuntimeHook) for h in hooks.values()):
                saved.append((hooks, list(hooks.items())))
                for key in [k for k, h in hooks.items() if isinstance(h, RuntimeHook)]:
                    del hooks[key]
        if isinstance(module.__dict__.get("forward"), RuntimeHook):
            saved.append((module, module.__dict__["forward"]))
            del module.forward
    try:
        yield
    finally:
        for owner, items in saved:
            if isinstance(owner, nn.Module):
                owner.forward = items
            else:
                owner.clear()
                owner.update(items)


def center_hooks(model: nn.Module) -> list[Center]:
    return [h for _, h in installed(model) if isinstance(h, Center)]
