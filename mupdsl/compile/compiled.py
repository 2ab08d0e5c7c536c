"""``apply`` and ``compile_model``: a spec onto the user's own module, giving a :class:`CompiledModel`
(design.md §3, §7).

The model is changed in place and stays the user's: same class, submodules, ``state_dict`` keys, train/eval
behaviour and hooks. The traced graph is the analysis (roles, fans, ties, blocks, attention, readouts) and the
*reference*: the same graph with every multiplier of the plan written out. What the user trains is their module
with the multipliers folded into its weights' init and optimizer settings, plus a forward hook where a multiplier
cannot be folded (:mod:`~mupdsl.compile.carry`). Before anything is changed, the two are run on the example batch
and must agree; a ratio-form spec must be the user's model at the base width (:mod:`~mupdsl.compile.checks`).
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import dataclass, field, replace as dc_replace
from typing import Any, Callable, Mapping

import torch
from torch import fx, nn
from torch.utils._pytree import tree_map

from ..spec import Spec, SpecError, load_spec
from . import hooks
from .analyze import Analysis, analyze, normalized as _normalized
from .carry import carry
from .checks import base_identity, compare_outputs, lint
from .errors import CompileError
from .factory import ModelFactory, load_factory
from .graph import copy_graph_module, record_values
from .init_record import InitReplay, build_recording_stds
from .initialize import initialize, optimizer_for, param_groups
from .own_init import record_build, record_own_init
from .plan import Plan, build_plan, plan_differences
from .repeated import expand, find_stack, truncated
from .rewrite import reference_graph
from .trace import Traced, trace

OPTIMIZERS = ("sgd", "adam", "adamw")
VERIFY_TOLERANCE = 2e-4
"""Largest difference allowed between the compiled model's outputs and the reference graph's, relative to the
largest output (float32 rounding of folded weights is ~1e-6; a misplaced multiplier is ≥ 1e-2)."""


@dataclass
class CompiledModel:
    """The user's model with a plan applied, the plan, and the optimizer that goes with it."""

    model: nn.Module
    plan: Plan
    handles: list = field(default_factory=list, repr=False)
    traced: Traced | None = field(default=None, repr=False)
    init_replay: InitReplay | None = field(default=None, repr=False, compare=False)
    """How the build drew the weights (at the plan's width), to redraw them in place for another seed."""
    factory: ModelFactory | None = field(default=None, repr=False)
    example_inputs: tuple | None = field(default=None, repr=False)
    _graph: fx.GraphModule | None = field(default=None, repr=False)
    replan: Callable[[], "CompiledModel"] | None = field(default=None, repr=False)

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __getstate__(self):
        # hook handles hold weak references, and the analysis graph (torch.export's) may not pickle: the model
        # carries its hooks itself, the plan says everything else
        state = dict(self.__dict__)
        state.update(handles=[], traced=None, _graph=None, replan=None)
        return state

    @property
    def graph(self) -> fx.GraphModule:
        """The reference graph: the traced model with every multiplier of the plan written out (for reading,
        ``mupdsl compile --emit-code``; the model itself carries them folded)."""
        if self._graph is None:
            if self.traced is None:
                raise CompileError("this compiled model has no traced graph (loaded without one)")
            self._graph = reference_graph(copy_graph_module(self.traced.graph_module), self.plan)
        return self._graph

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups with the plan's carried lr, weight decay and ε (``names`` lists them)."""
        return param_groups(self.model, self.plan)

    def optimizer(self, cls: type | None = None, **kwargs) -> torch.optim.Optimizer:
        """The plan's optimizer (or any ``torch.optim`` class ``cls`` of its family) over :meth:`param_groups`;
        ``kwargs`` (momentum, betas, …) go to its constructor."""
        return optimizer_for(self.model, self.plan, cls, **kwargs)

    def settings(self) -> dict[str, tuple[float, float, float | None]]:
        """Per tensor: the (lr, weight decay, ε) its optimizer uses — the plan's, carried."""
        return {t.name: (t.carried.lr, t.carried.wd or 0.0, t.carried.eps) for t in self.plan.tensors}

    def reinitialize(self, seed: int, factory: ModelFactory | None = None) -> "CompiledModel":
        """Re-draw the weights as ``compile_model(..., seed=seed)`` would, without tracing again: the build's own
        init calls replayed in place where they can be, else the model built again and its weights copied."""
        net = self.plan.network
        factory = factory or self.factory
        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            if self.init_replay is not None:
                self.init_replay(self.model)
            elif factory is not None:
                fresh = factory.build(net.width, net.depth if factory.takes_depth else None)
                with torch.no_grad():
                    for name, p in fresh.named_parameters():
                        self.model.get_parameter(name).copy_(p)
        finally:
            torch.random.set_rng_state(state)
        initialize(self.model, self.plan, seed)
        self._reset_center()
        return self

    def _reset_center(self) -> None:
        for hook in hooks.center_hooks(self.model):
            hook.initial = {k: v.detach().clone() for k, v in self.model.named_parameters()}

    def verify(self, inputs: tuple | None = None) -> float:
        """Run the model and the reference graph on ``inputs`` (default: the example batch) and return their
        largest relative difference; raises when it exceeds the tolerance."""
        inputs = inputs if inputs is not None else self.example_inputs
        if inputs is None:
            raise CompileError("no inputs to verify the compiled model on", hint="pass example inputs")
        params = dict(self.model.named_parameters())
        if self.replan is not None:   # planned from two blocks of a stack: plan it in full now, and compare
            with hooks.suspended(self.model):
                full = self.replan()
            hooks.remove(self.model)
            self.handles = hooks.install(self.model, self.plan.runtime)
            differences = plan_differences(self.plan, full.plan)
            if differences:
                raise CompileError("the plan repeated from two blocks differs from the full model's: "
                                   + "; ".join(differences[:5]), hint="report the model")
            self.traced, self._graph, self.replan = full.traced, None, None
            self.plan = self.plan.model_copy(update={"residual_blocks": full.plan.residual_blocks,
                                                     "attention": full.plan.attention,
                                                     "output_scales": full.plan.output_scales,
                                                     "tensors": full.plan.tensors})
        if self.traced is None or _devices(self.traced.graph_module) != _devices(self.model) or \
                _shapes_of(inputs) != _shapes_of(self.example_inputs):
            # compiled on meta and materialised since (or loaded): the reference is traced again, without the hooks
            with hooks.suspended(self.model):
                self.traced = trace(self.model, inputs)
            record_values(self.traced.graph_module, inputs)
            self._graph, self.example_inputs = None, inputs
        return _verify(self.model, self.graph, self.plan, params, inputs)

    def save(self, directory) -> Any:
        """Write ``model.pt`` (the state_dict, loaded with ``weights_only=True``) and ``plan.json`` beside it
        (:mod:`mupdsl.compile.checkpoint`)."""
        from .checkpoint import save  # noqa: PLC0415 - checkpoint imports this module

        return save(self, directory)


def _shapes_of(inputs) -> list:
    return [tuple(t.shape) if isinstance(t, torch.Tensor) else t for t in torch.utils._pytree.tree_leaves(inputs)]


def _devices(module: nn.Module) -> set[str]:
    return {t.device.type for t in (*module.parameters(), *module.buffers())}


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


def _refuse(model: nn.Module) -> None:
    if isinstance(model, torch.jit.ScriptModule):
        raise CompileError(f"{type(model).__name__} is a TorchScript module, which cannot be changed in place",
                           hint="apply the spec to the Python module, then script it")
    if type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):
        raise CompileError("the model is a torch.compile wrapper; hooks added now would be ignored by dynamo",
                           hint="apply the spec to the module first (model._orig_mod), then torch.compile it")


def _tensor_inputs_to(inputs: tuple | None, device) -> tuple | None:
    if inputs is None:
        return None
    return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, inputs)


def _verify(model: nn.Module, graph: fx.GraphModule, plan: Plan, params: Mapping[str, torch.Tensor],
            inputs: tuple) -> float:
    """The model run with ``params`` (its hooks on) against the reference graph run with the unfolded weights."""
    folds = {t.name: t.carried.fold for t in plan.tensors if t.carried is not None}
    spec_params = {name: (p / folds[name] if folds.get(name, 1.0) != 1.0 else p) for name, p in params.items()
                   if name in folds}
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            product = torch.func.functional_call(model, dict(params), inputs, strict=False)
            with hooks.suspended(model):
                reference = torch.func.functional_call(graph, spec_params, tuple(inputs), strict=False)
    finally:
        for m, training in modes.items():
            m.training = training
    worst, where = compare_outputs(reference, product)
    if worst > VERIFY_TOLERANCE:
        raise CompileError(
            f"the plan could not be carried exactly: the compiled model's {where} differs from the reference graph's "
            f"by {worst:.3g} (relative); runtime multipliers: "
            + ("; ".join(f"{m.kind} × {m.factor:.4g} on {m.module or 'the model'!r} ({m.reason})" for m in plan.runtime)
               or "none"),
            hint="report the model; the plan (mupdsl compile --json) names where each multiplier went")
    return worst


def apply_plan_to(spec: Spec, model: nn.Module, *, base: nn.Module, probe: nn.Module, inputs: tuple | None,
                  base_inputs: tuple | None, width: int, base_width: int, depth: int, base_depth: int,
                  optimizer: str, seed: int, keep_stds: dict, base_stds: dict, model_name: str, init: bool = True,
                  redraw_defaults: bool = False, verify: bool = True, notes: list[str] | None = None,
                  own_inits: dict | None = None, repeat: bool = True) -> CompiledModel:
    """The shared core of :func:`apply` and :func:`compile_model`: analyse, plan, check, carry, initialise.
    ``repeat``: a model on meta with a deep stack of identical blocks is planned from two of them
    (:mod:`~mupdsl.compile.repeated`)."""
    _refuse(model)
    removed = hooks.remove(model)
    meta = any(p.device.type == "meta" for p in model.parameters())
    at_base = width == base_width and depth == base_depth and inputs is not None and not meta and init
    own_output = _run_eval(model, inputs) if at_base else None   # TP5 Eq. 4: checked after the plan is applied
    stack = find_stack(model) if meta and repeat else None
    if stack is not None and find_stack(base) == stack:   # a deep model on meta: plan two blocks, repeat
        view, base_view, probe_view = (truncated(m, stack[0]) for m in (model, base, probe))
    else:
        view, base_view, probe_view, stack = model, base, probe, None
    traced = trace(view, inputs)

    def base_graph():  # the base model's graph: its head dimensions, own attention scales, constants
        try:
            return trace(base_view, base_inputs).graph_module
        except CompileError:
            return None

    try:
        analysis = analyze(traced.graph_module, base_view, probe_view, traced.leaves, inputs, base_inputs,
                           base_graph if inputs is not None else None, root=view)
    except CompileError:
        raise
    except Exception as exc:  # noqa: BLE001 - never a traceback for a model we cannot analyse
        raise CompileError(f"analysing the traced model failed: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                           hint="report the model; meanwhile mark the failing submodule as a leaf") from None
    analysis.notes[:0] = traced.notes + list(notes or [])
    if removed:
        analysis.notes.append(f"{removed} mupdsl hook(s) of an earlier plan removed")
    if base_width == width and spec.name != "sp":
        analysis.notes.append(f"base width = width = {width}: ratio rules (µP presets) reduce to SP here")

    def plan_at(w: int, bw: int, d: int, bd: int, stds: dict, analysis_: Analysis) -> Plan:
        return build_plan(spec, analysis_, optimizer, model=model_name, frontend=traced.frontend, seed=seed,
                          width=w, base_width=bw, depth=d, base_depth=bd, keep_stds=stds, base_stds=base_stds,
                          own_inits=own_inits)

    plan = plan_at(width, base_width, depth, base_depth, keep_stds, analysis)
    findings = lint(plan, analysis, spec)
    outcome, problems = base_identity(plan, spec, lambda: plan_at(base_width, base_width, base_depth, base_depth,
                                                                   base_stds, _at_base(analysis)))
    if problems:
        raise CompileError(f"{spec.name} at the base width and depth is not the user's model (TP5 Eq. 4): "
                           + "; ".join(problems[:5]) + (f" and {len(problems) - 5} more" if len(problems) > 5 else ""),
                           hint="a ratio-form spec must reduce to the model's own init, one learning rate and no "
                                "multiplier at the base size; check the rules named")
    plan = carry(plan, analysis, traced.graph_module, view)
    plan = plan.model_copy(update={"warnings": plan.warnings + findings.warnings,
                                   "checks": {"base_identity": outcome}})
    if stack is not None:
        expanded = expand(plan, stack[0], stack[1], list(dict.fromkeys(n for n, _ in model.named_parameters())))
        if expanded is None:   # the blocks were not alike after all: the whole model, traced
            return apply_plan_to(spec, model, base=base, probe=probe, inputs=inputs, base_inputs=base_inputs,
                                 width=width, base_width=base_width, depth=depth, base_depth=base_depth,
                                 optimizer=optimizer, seed=seed, keep_stds=keep_stds, base_stds=base_stds,
                                 model_name=model_name, init=init, redraw_defaults=redraw_defaults, verify=verify,
                                 notes=notes, own_inits=own_inits, repeat=False)
        plan, traced = expanded, None
    compiled = CompiledModel(model, plan, traced=traced, example_inputs=inputs)
    if stack is not None:   # verify() later plans the materialised model in full and checks it is this plan
        compiled.replan = lambda: apply_plan_to(
            spec, model, base=base, probe=probe, inputs=inputs, base_inputs=base_inputs, width=width,
            base_width=base_width, depth=depth, base_depth=base_depth, optimizer=optimizer, seed=seed,
            keep_stds=keep_stds, base_stds=base_stds, model_name=model_name, init=False, verify=False,
            own_inits=own_inits, repeat=False)
    folds = {t.name: t.carried.fold for t in plan.tensors}
    initial = {name: p * folds.get(name, 1.0) for name, p in model.named_parameters()} if plan.network.center else None
    handles = hooks.install(model, plan.runtime, initial)
    compiled.handles = handles
    try:
        if verify and inputs is not None and not meta:
            # a centered model is 0 at θ₀: it is checked a little away from it
            moved = 1.05 if plan.network.center else 1.0
            trial = {name: (p * folds.get(name, 1.0) * moved) for name, p in model.named_parameters()}
            worst = _verify(model, compiled.graph, plan, trial, inputs)
            plan.checks["carried"] = f"verified on the example batch (largest relative difference {worst:.2g})"
        else:
            plan.checks["carried"] = "not verified (" + ("a meta model" if meta else "no example inputs" if inputs
                                                         is None else "verify=False") + ")"
    except BaseException:
        hooks.remove(model)
        raise
    if init and not meta:
        plan.warnings.extend(initialize(model, plan, seed, redraw_defaults=redraw_defaults))
        compiled._reset_center()
    if own_output is not None and outcome == "passed":
        worst, where = compare_outputs(own_output, _run_eval(model, inputs))
        if worst > VERIFY_TOLERANCE:
            hooks.remove(model)
            raise CompileError(f"{spec.name} at the base width is not the user's model (TP5 Eq. 4): its {where} "
                               f"differs from the model's own by {worst:.3g} (relative)",
                               hint="report the model with the plan (mupdsl compile --json)")
        plan.checks["base_identity"] = f"passed: at the base width the outputs are the model's own (largest " \
                                       f"relative difference {worst:.2g})"
    return compiled


def _run_eval(model: nn.Module, inputs: tuple):
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            out = model(*inputs)
        return torch.utils._pytree.tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, out)
    finally:
        for m, training in modes.items():
            m.training = training


def _at_base(analysis: Analysis) -> Analysis:
    """The analysis as seen at the base size: each tensor's fans and each head's dimension at the base."""
    tensors = {name: dc_replace(t, fan_in=t.base_fan_in, fan_out=t.base_fan_out) for name, t in analysis.tensors.items()}
    attention = [dc_replace(a, d_head=a.base_d_head, own_scale=a.base_own_scale) for a in analysis.attention]
    return dc_replace(analysis, tensors=tensors, attention=attention)


def _resolve_spec(spec: Spec | str, overrides: Mapping[str, Any] | None) -> Spec:
    if isinstance(spec, Spec):
        if overrides:
            from ..spec import apply_overrides  # noqa: PLC0415

            return apply_overrides(spec, dict(overrides))
        return spec
    try:
        return load_spec(spec, overrides)
    except SpecError as exc:
        raise CompileError(exc.render()) from None


def compile_model(spec: Spec | str, model: str | Callable[..., nn.Module] | ModelFactory, *, width: int,
                  base_width: int | None = None, depth: int | None = None, base_depth: int | None = None,
                  optimizer: str = "sgd", overrides: Mapping[str, Any] | None = None, seed: int = 0,
                  device: str | torch.device | None = None, verify: bool = True) -> CompiledModel:
    """Build the model of a model file (or factory) at ``width`` (and ``depth``) and apply ``spec`` to it.

    ``base_width`` (default: ``width``) and ``base_depth`` (default: ``depth``) name the base model of the
    ratio rules (``width_mult = width / base_width``). ``seed`` seeds the build and the plan's init; the caller's
    random state is left as it was. ``device="meta"`` builds a plan without allocating weights.
    """
    if optimizer not in OPTIMIZERS:
        raise CompileError(f"unknown optimizer {optimizer!r}", hint="choose sgd, adam or adamw")
    spec = _resolve_spec(spec, overrides if not isinstance(spec, Spec) else overrides)
    factory = model if isinstance(model, ModelFactory) else load_factory(model)
    depth = depth if depth is not None else factory.default_depth
    base_width = base_width or width
    base_depth = base_depth if base_depth is not None else depth
    if width <= 0 or base_width <= 0:
        raise CompileError(f"widths must be positive (width {width}, base width {base_width})")
    meta = device is not None and torch.device(device).type == "meta"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if meta:   # the build's own init calls are the record (an init in __init__ included)
            with torch.device("meta"):
                net, own_inits = record_build(lambda: factory.build(width, depth))
                _, base_own = record_build(lambda: factory.build(base_width, base_depth))
                _, base_here = record_build(lambda: factory.build(base_width, depth))
            own_stds, replay = {}, None
        else:
            with torch.device(device) if device is not None else _nullcontext():
                net, own_stds, replay = build_recording_stds(lambda: factory.build(width, depth))
        batch = _tensor_inputs_to(_inputs(factory.example_batch(2)), device)
        base, probe = _references(factory, base_width, depth)
        base_batch = _tensor_inputs_to(batch, "meta")
        names = [n for n, _ in net.named_parameters()]
        if meta:
            keep = {n: own_inits[n].std_of if own_inits.get(n) is not None else None for n in names}
            base_stds = by_pattern({n: o.std_of if o is not None else None for n, o in base_own.items()}, names,
                                   {n: o.std_of if o is not None else None for n, o in base_here.items()})
        else:
            own_inits = None
            keep = {n: own_stds.get(n) for n in names}
            base_stds = by_pattern(_base_stds(factory, base_width, base_depth, seed), names,
                                   _base_stds(factory, base_width, depth, seed) if base_depth != depth else None)
        compiled = apply_plan_to(spec, net, base=base, probe=probe, inputs=batch, base_inputs=base_batch, width=width,
                                 base_width=base_width, depth=depth or 1, base_depth=base_depth or 1,
                                 optimizer=optimizer, seed=seed, keep_stds=keep, base_stds=base_stds,
                                 model_name=str(factory.source), verify=verify, own_inits=own_inits)
    compiled.init_replay = None if meta else replay
    compiled.factory = factory
    return compiled


def apply(spec: Spec | str, model: nn.Module, *, base: nn.Module | Callable[..., nn.Module],
          delta: nn.Module | None = None, example_inputs: tuple | Any | None = None, width: int | None = None,
          base_width: int | None = None, depth: int | None = None, base_depth: int | None = None,
          optimizer: str = "adam", overrides: Mapping[str, Any] | None = None, seed: int = 0, init: bool = True,
          redraw_defaults: bool = False, verify: bool = True) -> CompiledModel:
    """Apply ``spec`` to ``model`` in place — mup's ``set_base_shapes(model, base)`` habit.

    ``base``: the model at the base width (best built on ``meta``), or a builder ``base(width)`` /
    ``base(width, depth)`` (then ``width`` and ``base_width`` are required, and the base is built for real at the
    base width to read its init exactly). When ``model`` is itself at the base width, ``delta`` is a model at
    another width, as in mup. ``example_inputs`` (a tensor or a tuple of positional inputs) size the attention
    and let the compile verify itself; without them the plan says it is unverified. ``init=False`` keeps the
    current weights (to load a checkpoint into them); ``redraw_defaults`` re-runs the modules' own init for
    ``keep``/``base`` tensors (after ``to_empty()``)."""
    if optimizer not in OPTIMIZERS:
        raise CompileError(f"unknown optimizer {optimizer!r}", hint="choose sgd, adam or adamw")
    if not isinstance(model, nn.Module):
        raise CompileError(f"apply() needs an nn.Module, got {type(model).__name__}")
    _refuse(model)
    spec = _resolve_spec(spec, overrides)
    inputs = _inputs((example_inputs, None)) if example_inputs is not None else None
    notes: list[str] = []
    meta_model = any(p.device.type == "meta" for p in model.parameters())
    names = [n for n, _ in model.named_parameters()]
    if callable(base) and not isinstance(base, nn.Module):
        if width is None or base_width is None:
            raise CompileError("apply() with a base builder needs width= and base_width=")
        builder = load_factory(base)
        with torch.device("meta"):   # the builder's own init calls are the record, at both widths
            base_model = builder.build(base_width, depth)
            probe = builder.build(2 * base_width, depth)
            _, base_own = record_build(lambda: builder.build(base_width, base_depth))
            _, base_here = record_build(lambda: builder.build(base_width, depth))
            _, built_own = record_build(lambda: builder.build(width, depth))
        base_stds = by_pattern({n: o.std_of if o is not None else None for n, o in base_own.items()}, names,
                               {n: o.std_of if o is not None else None for n, o in base_here.items()})
    else:
        base_model = base
        if not isinstance(base_model, nn.Module):
            raise CompileError("base= must be a model at the base width or a builder of one")
        probe = delta if delta is not None else model
        if _shapes(probe) == _shapes(base_model):
            raise CompileError("the model has the base model's shapes: which dims scale with width cannot be told",
                               hint="pass delta= (the model at another width), or a builder as base=")
        base_own = record_own_init(base_model)   # on a meta skeleton when the base has values
        base_stds = by_pattern({n: o.std_of if o is not None else None for n, o in base_own.items()}, names)
        if meta_model and not hasattr(model, "init_weights"):
            notes.append("the model's own init is read from its modules' reset_parameters(): an init its __init__ "
                         "does itself is not seen on meta — pass a builder as base= to read it from a build")
    # with init=False the values are trained ones (a checkpoint): only the record says what the init was
    own_inits, keep, disagree = _own_stds(model, names, meta_model or not init,
                                          built_own if callable(base) and not isinstance(base, nn.Module) else None)
    if disagree:
        notes.append(f"{', '.join(disagree[:4])}{' and more' if len(disagree) > 4 else ''}: the model's values do not "
                     "follow its init routine (an init in __init__): their own std is the sample's"
                     + ("; the base width's cannot be read from a base instance — pass a builder as base="
                        if not callable(base) or isinstance(base, nn.Module) else ""))
        if not callable(base) or isinstance(base, nn.Module):
            base_stds.update({n: None for n in disagree})
    if width is None or base_width is None:
        width, base_width, why = _infer_width(model, base_model, probe)
        notes.append(why)
    if depth is None or base_depth is None:
        depth, base_depth, why = _infer_depth(model, base_model)
        if why:
            notes.append(why)
    base_inputs = _tensor_inputs_to(inputs, "meta")
    return apply_plan_to(spec, model, base=base_model, probe=probe, inputs=inputs, base_inputs=base_inputs,
                         width=width, base_width=base_width, depth=depth, base_depth=base_depth, optimizer=optimizer,
                         seed=seed, keep_stds=keep, base_stds=base_stds, model_name=type(model).__qualname__,
                         init=init and not meta_model, redraw_defaults=redraw_defaults, verify=verify, notes=notes,
                         own_inits=own_inits)


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_parameter(name)
        return True
    except AttributeError:
        return False


def _shapes(model: nn.Module) -> dict[str, tuple]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def _own_stds(model: nn.Module, names: list[str], meta: bool, built: dict | None = None
              ) -> tuple[dict, dict, list[str]]:
    """(own inits recorded from a build of the model — ``built`` — or else its init routine, the own init std of
    each tensor, the tensors whose values contradict the record). A model with values is measured too: a tensor of
    256 or more entries whose sample std is more than 20 % off the record was initialised otherwise (in
    ``__init__``, outside the routine); its sample std is its own, and its record is not used to re-draw it."""
    own = dict(built) if built is not None else record_own_init(model)
    keep, disagree = {}, []
    for n in names:
        recorded = own[n].std_of if own.get(n) is not None else None
        if meta:
            keep[n] = recorded
            continue
        sample = _keep_std(model, n)
        p = model.get_parameter(n)
        if recorded is not None and p.numel() >= 256 and sample is not None and \
                abs(sample - recorded) > 0.2 * max(recorded, 1e-12):
            disagree.append(n)
            own[n] = None
            keep[n] = sample
        else:
            keep[n] = recorded if recorded is not None else sample
    return own, keep, disagree


def _infer_width(model: nn.Module, base: nn.Module, probe: nn.Module | None = None) -> tuple[int, int, str]:
    """The most common (width, base width) pair of sizes among the dims that scale (those where the model, or the
    probe when the model is at the base width, differs from the base)."""
    pairs: Counter = Counter()
    base_shapes, probe_shapes = _shapes(base), _shapes(probe if probe is not None else model)
    for name, shape in _shapes(model).items():
        b, q = base_shapes.get(name), probe_shapes.get(name)
        if b is None or q is None or not (len(b) == len(shape) == len(q)):
            continue
        pairs.update((x, y) for x, y, z in zip(shape, b, q) if z != y)
    if not pairs:
        return 1, 1, "no dimension differs from the base model's: width = base width"
    (width, base_width), _ = pairs.most_common(1)[0]
    return width, base_width, (f"width {width}, base width {base_width}: the most common scaling dimension "
                               "(pass width= and base_width= to set them)")


def _infer_depth(model: nn.Module, base: nn.Module) -> tuple[int, int, str]:
    lengths = {name: len(m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0}
    if not lengths:
        return 1, 1, ""
    name = max(lengths, key=lengths.get)
    try:
        base_len = len(base.get_submodule(name))
    except AttributeError:
        base_len = lengths[name]
    return lengths[name], base_len, (f"depth {lengths[name]}, base depth {base_len}: the length of {name!r} "
                                     "(pass depth= and base_depth= to set them)")


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


def by_pattern(stds: dict[str, float | None], names: list[str], fallback: dict[str, float | None] | None = None
               ) -> dict[str, float | None]:
    """Each name's std, looked up by name, else by name with its block indices wildcarded: the base model is built at
    the base depth (its own init of a deep model's residual projections — GPT-2's 0.02/sqrt(2·n_layer) — is the
    base depth's; the depth multipliers of the spec do the rest), so a deeper model's later blocks take the std of
    the base's block of the same kind."""
    pattern: dict[str, float | None] = {}
    for name, std in stds.items():
        pattern.setdefault(_normalized(name), std)
    fallback = fallback or {}
    out = {}
    for n in names:
        if n in stds:
            out[n] = stds[n]
        elif _normalized(n) in pattern:
            out[n] = pattern[_normalized(n)]
        else:   # a layer the base depth does not have (a stage's first conv): the base width at this depth
            out[n] = fallback.get(n)
    return out


def _base_stds(factory: ModelFactory, base_width: int, depth: int | None, seed: int) -> dict[str, float | None]:
    """Init stds of the model at the base width and depth; cached, since a sweep compiles many widths on one
    base."""
    key = (factory.source, id(factory.builder), base_width, depth)
    if key not in _BASE_STDS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _, stds, _ = build_recording_stds(lambda: factory.build(base_width, depth))
        if len(_BASE_STDS) > 64:
            _BASE_STDS.clear()
        _BASE_STDS[key] = stds
    return _BASE_STDS[key]


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
