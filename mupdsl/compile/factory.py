"""Model files: ``MODEL.py`` with ``build(width, depth=…)`` (and optionally ``example_batch(batch_size)``),
``MODEL.py:Name`` for a class or factory taking ``width`` (and ``depth``), or ``package.module:name``
(``mupdsl.models:mlp`` names the reference MLP's module)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import torch
from torch import nn

from .errors import CompileError


@dataclass(frozen=True)
class ModelFactory:
    """Builds the model at a width (and depth); knows its example batch when the file gives one."""

    source: str
    builder: Callable[..., nn.Module]
    takes_depth: bool
    default_depth: int | None
    example: Callable[[int], Any] | None

    def build(self, width: int, depth: int | None = None) -> nn.Module:
        try:
            model = self.builder(width, depth) if self.takes_depth and depth is not None else self.builder(width)
        except CompileError:
            raise
        except Exception as exc:  # noqa: BLE001 - a user's factory can fail in any way
            raise CompileError(f"{self.source}: building the model at width {width}"
                               f"{f', depth {depth}' if depth is not None else ''} failed: "
                               f"{type(exc).__name__}: {exc}") from None
        if not isinstance(model, nn.Module):
            raise CompileError(f"{self.source}: build() returned {type(model).__name__}, not a torch.nn.Module")
        return model

    def example_batch(self, batch_size: int):
        if self.example is None:
            return None
        try:
            return self.example(batch_size)
        except Exception as exc:  # noqa: BLE001
            raise CompileError(f"{self.source}: example_batch({batch_size}) failed: {type(exc).__name__}: {exc}") from None

    def training_batch(self, batch_size: int) -> tuple[tuple, torch.Tensor]:
        """``example_batch`` as training needs it: (inputs, targets) with a tensor of targets; the inputs as a
        tuple of positional arguments. A CompileError names what the file returned otherwise."""
        batch = self.example_batch(batch_size)
        if batch is None:
            raise CompileError(f"{self.source}: the model file has no example_batch(batch_size)",
                               hint="add one returning (inputs, targets), or pass --data mnist1d")
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor)):
            what = type(batch).__name__ + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
            raise CompileError(f"{self.source}: example_batch({batch_size}) returned a {what}; training needs "
                               "(inputs, targets) with targets a tensor",
                               hint="return (x, y), or ((x1, x2), y) for a forward with several inputs")
        return positional(batch[0]), batch[1]


def positional(inputs) -> tuple:
    """A model's inputs as positional arguments: a tuple or list as they are, anything else as the one argument."""
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _import_path(path: Path) -> ModuleType:
    """The model file as a module, imported once per content: an edited file (a notebook, a long-lived process) is
    imported again under a new name, never served stale."""
    digest = hashlib.sha256(str(path.resolve()).encode() + b"\0" + path.read_bytes()).hexdigest()[:20]
    name = f"mupdsl_model_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CompileError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = str(path.resolve().parent)
    if folder not in sys.path:   # a model file imports its siblings as a script run from its folder would
        sys.path.append(folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001
        del sys.modules[name]
        raise CompileError(f"{path}: importing the model file failed: {type(exc).__name__}: {exc}") from None
    return module


def load_factory(target: str | Callable[..., nn.Module]) -> ModelFactory:
    """Resolve ``path.py``, ``path.py:Name``, ``package.module`` or ``package.module:name`` to a factory."""
    if callable(target) and not isinstance(target, str):
        return _from_callable(getattr(target, "__name__", "model"), target, None)
    text = str(target)
    if not text.strip():
        raise CompileError("no model given (an empty name)",
                           hint="give a .py file defining build(width, depth), or a module such as mupdsl.models.mlp")
    base, _, attr = text.partition(":") if not (len(text) > 1 and text[1] == ":" and text[2:3] in "\\/") else (text, "", "")
    if base.endswith(".py") or "/" in base:
        path = Path(base)
        if not path.is_file():
            raise CompileError(f"no such model file: {base}", hint="give a path to a .py file defining build(width, depth)")
        module = _import_path(path)
    else:
        try:
            module = importlib.import_module(base)
        except (ImportError, ValueError, TypeError) as exc:   # ValueError: an empty or relative module name
            raise CompileError(f"cannot import model module {base!r}: {exc}") from None
    obj: Any = module
    if attr:
        if not hasattr(module, attr):
            names = [n for n in dir(module) if not n.startswith("_")]
            raise CompileError(f"{base} has no {attr!r}", hint=f"it defines: {', '.join(names[:20])}")
        obj = getattr(module, attr)
    if isinstance(obj, ModuleType):
        if not hasattr(obj, "build"):
            raise CompileError(f"{text}: the model file defines no build(width, depth) function",
                               hint="add `def build(width: int, depth: int = 2) -> nn.Module`, or name a class "
                                    "with MODEL.py:ClassName")
        return _from_callable(text, obj.build, getattr(obj, "example_batch", None))
    if callable(obj):
        return _from_callable(text, obj, getattr(module, "example_batch", None))
    raise CompileError(f"{text} is not a class, function or module")


def _from_callable(source: str, fn: Callable[..., nn.Module], example) -> ModelFactory:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = [p.name for p in positional]
    if not positional or (names[0] not in ("width", "n", "d_model", "hidden") and "width" not in names):
        raise CompileError(f"{source}: {getattr(fn, '__name__', 'build')}{inspect.signature(fn) if params else '()'} "
                           "does not take a width as its first argument",
                           hint="the factory must be build(width: int, depth: int = …) -> nn.Module")
    takes_depth = len(positional) >= 2
    default_depth = positional[1].default if takes_depth and positional[1].default is not inspect._empty else None
    if takes_depth and default_depth is None:
        default_depth = None
    return ModelFactory(source, fn, takes_depth, default_depth, example)
