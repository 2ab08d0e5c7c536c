"""``compile_model``: a spec onto a model factory, giving a :class:`CompiledModel` (design.md §7)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import fx, nn
from torch.utils._pytree import tree_map

from ..spec import Spec, SpecError, load_spec
from .analyze import analyze
from .errors import CompileError
from .factory import ModelFactory, load_factory
from .init_record import InitReplay, build_recording_stds
from .plan import Plan, build_plan
from .rewrite import CENTER_MODULE, apply_plan, center, reinit
from .trace import trace

OPTIMIZER_CLASSES = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


@dataclass
class CompiledModel:
    """The rewritten model (an ``fx.GraphModule`` with the user's parameter names), its plan, its optimizer."""

    model: fx.GraphModule
    plan: Plan
    init_replay: InitReplay | None = field(default=None, repr=False, compare=False)
    """How the build drew the weights (at the plan's width), to redraw them in place for another seed."""

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups: tensors with equal (lr, wd, eps) share a group; ``names`` lists them."""
        groups: dict[tuple, dict[str, Any]] = {}
        for t in self.plan.tensors:
            key = (t.lr, t.wd, t.eps)
            if key not in groups:
                group: dict[str, Any] = {"params": [], "names": [], "lr": t.lr, "weight_decay": t.wd or 0.0}
                if self.plan.optimizer != "sgd" and t.eps is not None:
                    group["eps"] = t.eps
                groups[key] = group
            groups[key]["params"].append(self.model.get_parameter(t.name))
            groups[key]["names"].append(t.name)
        return list(groups.values())

    def optimizer(self, **kwargs) -> torch.optim.Optimizer:
        """The plan's optimizer over :meth:`param_groups`; ``kwargs`` (momentum, betas, …) go to its constructor."""
        groups = self.param_groups()
        cls = OPTIMIZER_CLASSES[self.plan.optimizer]
        return cls(groups, lr=groups[0]["lr"] if groups else 1e-3, **kwargs)

    def reinitialize(self, seed: int, factory: ModelFactory | None = None) -> "CompiledModel":
        """Re-draw the weights as ``compile_model(..., seed=seed)`` would, without tracing again: the build's own
        init calls replayed in place where they can be (:class:`~mupdsl.compile.init_record.InitReplay`), else
        the model built again and its weights copied."""
        net = self.plan.network
        torch.manual_seed(seed)
        if self.init_replay is not None:
            self.init_replay(self.model)
        else:
            factory = factory or load_factory(self.plan.model)
            fresh = factory.build(net.width, net.depth if factory.takes_depth else None)
            with torch.no_grad():
                for name, p in fresh.named_parameters():
                    self.model.get_parameter(name).copy_(p)
        first = next(iter(self.model.parameters()), None)
        generator = torch.Generator(device=first.device if first is not None else "cpu").manual_seed(seed)
        reinit(self.model, self.plan, generator)
        if net.center:
            frozen = self.model.get_submodule(CENTER_MODULE)
            with torch.no_grad():
                for key, buffer in frozen.named_buffers():
                    buffer.copy_(self.model.get_parameter(key.replace("__", ".")))
        return self

    def save(self, directory: str | Path) -> Path:
        """Write ``model.pt`` (the state_dict) and ``plan.json`` beside it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), directory / "model.pt")
        (directory / "plan.json").write_text(json.dumps(self.plan.model_dump(), indent=1))
        return directory


def _inputs(batch) -> tuple | None:
    if batch is None:
        return None
    inputs = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else batch
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _keep_std(model: nn.Module, name: str) -> float | None:
    """Std of a tensor's default init: measured when it exists, from PyTorch's rules on the meta device."""
    p = model.get_parameter(name)
    if p.device.type != "meta":
        return float(p.detach().float().std()) if p.numel() > 1 else 0.0
    owner_name, _, local = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    if isinstance(owner, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        w = owner.weight
        fan_in = w.shape[1] * math.prod(w.shape[2:])
        return 1.0 / math.sqrt(3.0 * fan_in)  # kaiming_uniform(a=√5) and the bias's U(±1/√fan_in)
    if isinstance(owner, nn.Embedding):
        return 1.0
    if isinstance(owner, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)):
        return 0.0
    return None


_BASE_STDS: dict[tuple, dict[str, float | None]] = {}
_REFERENCES: dict[tuple, tuple[nn.Module, nn.Module]] = {}


def _references(factory: ModelFactory, base_width: int, depth: int | None) -> tuple[nn.Module, nn.Module]:
    """The model at the base width and at twice it, on the meta device, at the model's own depth (so every
    parameter name has a counterpart); cached per factory and base."""
    key = (factory.source, id(factory.builder), base_width, depth)
    if key not in _REFERENCES:
        with torch.device("meta"):
            refs = (factory.build(base_width, depth), factory.build(2 * base_width, depth))
        if len(_REFERENCES) > 64:
            _REFERENCES.clear()
        _REFERENCES[key] = refs
    return _REFERENCES[key]


def _base_stds(factory: ModelFactory, base_width: int, depth: int | None, seed: int) -> dict[str, float | None]:
    """Init stds of the model at the base width; cached, since a sweep compiles many widths on one base."""
    key = (factory.source, id(factory.builder), base_width, depth)
    if key not in _BASE_STDS:
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        _, stds, _ = build_recording_stds(lambda: factory.build(base_width, depth))
        torch.random.set_rng_state(state)
        if len(_BASE_STDS) > 64:
            _BASE_STDS.clear()
        _BASE_STDS[key] = stds
    return _BASE_STDS[key]


def compile_model(spec: Spec | str | Path, model: str | Callable[..., nn.Module] | ModelFactory, *, width: int,
                  base_width: int | None = None, depth: int | None = None, base_depth: int | None = None,
                  optimizer: str = "sgd", overrides: Mapping[str, Any] | None = None, seed: int = 0,
                  device: str | torch.device | None = None) -> CompiledModel:
    """Compile ``spec`` onto the model built by ``model`` at ``width`` (and ``depth``).

    ``base_width`` (default: ``width``) and ``base_depth`` (default: ``depth``) name the base model of the
    ratio rules (``width_mult = width / base_width``). ``seed`` seeds construction and re-initialisation.
    ``device="meta"`` builds a plan without allocating weights.
    """
    if optimizer not in OPTIMIZER_CLASSES:
        raise CompileError(f"unknown optimizer {optimizer!r}", hint="choose sgd, adam or adamw")
    if not isinstance(spec, Spec):
        try:
            spec = load_spec(spec, overrides)
        except SpecError as exc:
            raise CompileError(exc.render()) from None
    factory = model if isinstance(model, ModelFactory) else load_factory(model)
    depth = depth if depth is not None else factory.default_depth
    base_width = base_width or width
    base_depth = base_depth if base_depth is not None else depth
    if width <= 0 or base_width <= 0:
        raise CompileError(f"widths must be positive (width {width}, base width {base_width})")

    torch.manual_seed(seed)
    meta = device is not None and torch.device(device).type == "meta"
    with torch.device(device) if device is not None else _nullcontext():
        net, own_stds, replay = build_recording_stds(lambda: factory.build(width, depth))
    batch = _inputs(factory.example_batch(2))
    if batch is not None and device is not None:
        batch = tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, batch)
    traced = trace(net, batch)
    base, probe = _references(factory, base_width, depth)
    base_batch = None if batch is None else tree_map(
        lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t, batch)

    def base_graph():  # traced only when the model has attention, to read the base head dimension
        try:
            return trace(base, base_batch).graph_module
        except CompileError:
            return None

    try:
        analysis = analyze(traced.graph_module, base, probe, traced.leaves, batch, base_batch,
                           base_graph if batch is not None else None)
    except CompileError:
        raise
    except Exception as exc:  # noqa: BLE001 - never a traceback for a model we cannot analyse
        raise CompileError(f"analysing the traced model failed: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                           hint="report the model; meanwhile mark the failing submodule as a leaf") from None
    analysis.notes.extend(traced.notes)
    if base_width == width and spec.name not in ("sp",):
        analysis.notes.append(f"base width = width = {width}: ratio rules (µP presets) reduce to SP here")
    if meta:
        keep = {name: _keep_std(traced.graph_module, name) for name in analysis.tensors}
        base_stds = {name: _keep_std(base, name) for name in analysis.tensors}
    else:
        keep = {name: own_stds.get(name) for name in analysis.tensors}
        base_own = _base_stds(factory, base_width, depth, seed)
        base_stds = {name: base_own.get(name) for name in analysis.tensors}
    plan = build_plan(spec, analysis, optimizer, model=str(factory.source), frontend=traced.frontend, seed=seed,
                      width=width, base_width=base_width, depth=depth or 1, base_depth=base_depth or 1,
                      keep_stds=keep, base_stds=base_stds)
    generator = None
    if device is None or torch.device(device).type != "meta":
        first = next(iter(traced.graph_module.parameters()), None)
        generator = torch.Generator(device=first.device if first is not None else "cpu").manual_seed(seed)
    reinit(traced.graph_module, plan, generator)
    gm = apply_plan(traced.graph_module, plan)
    if plan.network.center:
        gm = center(gm)
    return CompiledModel(gm, plan, None if meta else replay)


def load_compiled(directory: str | Path, map_location: str | None = "cpu") -> CompiledModel:
    """Rebuild a compiled model from ``plan.json`` and load ``model.pt`` saved by :meth:`CompiledModel.save`."""
    directory = Path(directory)
    plan = Plan.model_validate_json((directory / "plan.json").read_text())
    compiled = compile_model(plan.spec, plan.model, width=plan.network.width, base_width=plan.network.base_width,
                             depth=plan.network.depth, base_depth=plan.network.base_depth,
                             optimizer=plan.optimizer, overrides=plan.hypers, seed=plan.seed)
    state = torch.load(directory / "model.pt", map_location=map_location)
    compiled.model.load_state_dict(state)
    return compiled


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
