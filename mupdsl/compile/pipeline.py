"""The shared core of ``compile_model`` and ``apply``: analyse the traced model, plan, check, carry the plan on the
user's module, initialise (design.md §3).

The traced graph is the analysis (roles, fans, ties, blocks, attention, readouts) and the *reference*: the same
graph with every multiplier of the plan written out. What the user trains is their module with the multipliers
folded into its weights' init and optimizer settings, plus a forward hook where a multiplier cannot be folded
(:mod:`~mupdsl.compile.carry`). Before anything is changed, the two are run on the example batch and must agree;
a ratio-form spec must be the user's model at the base width (:mod:`~mupdsl.compile.checks`).
"""

from __future__ import annotations

from dataclasses import replace as dc_replace
import math

import torch
from torch import nn
from torch.utils._pytree import tree_map

from ..spec import Spec
from . import hooks
from .analyze import Analysis, analyze
from .carry import carry
from .factory import positional
from .checks import VERIFY_TOLERANCE, base_identity, compare_outputs, lint, verify_carried
from .compiled import CompiledModel
from .errors import CompileError, listed
from .initialize import initialize
from .plan import Plan, build_plan
from .repeated import expand, find_stack, truncated
from .trace import trace


def refuse(model: nn.Module) -> None:
    """A model that cannot be changed in place: a CompileError naming why."""
    if isinstance(model, torch.jit.ScriptModule):
        raise CompileError(f"{type(model).__name__} is a TorchScript module, which cannot be changed in place",
                           hint="apply the spec to the Python module, then script it")
    if type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):
        raise CompileError("the model is a torch.compile wrapper; hooks added now would be ignored by dynamo",
                           hint="apply the spec to the module first (model._orig_mod), then torch.compile it")


def inputs_of(batch) -> tuple | None:
    """The positional inputs of an example batch ((inputs, targets), or the inputs alone)."""
    if batch is None:
        return None
    return positional(batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else batch)


def moved(inputs: tuple | None, device) -> tuple | None:
    if inputs is None:
        return None
    return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, inputs)


def keep_std(model: nn.Module, name: str) -> float | None:
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


def apply_plan_to(spec: Spec, model: nn.Module, *, base: nn.Module, probe: nn.Module, inputs: tuple | None,
                  base_inputs: tuple | None, width: int, base_width: int, depth: int, base_depth: int,
                  optimizer: str, seed: int, keep_stds: dict, base_stds: dict, model_name: str, init: bool = True,
                  redraw_defaults: bool = False, verify: bool = True, notes: list[str] | None = None,
                  own_inits: dict | None = None, repeat: bool = True) -> CompiledModel:
    """The shared core of :func:`apply` and :func:`compile_model`: analyse, plan, check, carry, initialise.
    ``repeat``: a model on meta with a deep stack of identical blocks is planned from two of them
    (:mod:`~mupdsl.compile.repeated`)."""
    refuse(model)
    removed = hooks.remove(model)
    meta = any(p.device.type == "meta" for p in model.parameters())
    at_base = width == base_width and depth == base_depth and inputs is not None and not meta and init
    # the user's model, as they wrote it, on its example batch: a failure here is theirs (the batch or the model),
    # reported as such before anything is changed; at the base width it is also TP5 Eq. 4's reference output
    own_output = _own_run(model, inputs, model_name) if inputs is not None and not meta else None
    own_output = own_output if at_base else None
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
                           + listed(problems, 5, "; "),
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
            worst = verify_carried(model, compiled.graph, plan, trial, inputs)
            plan.checks["carried"] = f"verified on the example batch (largest relative difference {worst:.2g})"
        else:
            plan.checks["carried"] = "not verified (" + ("a meta model" if meta else "no example inputs" if inputs
                                                         is None else "verify=False") + ")"
    except BaseException:
        hooks.remove(model)
        raise
    before = {k: v.detach().clone() for k, v in model.state_dict().items()} if own_output is not None else None
    if init and not meta:
        plan.warnings.extend(initialize(model, plan, seed, redraw_defaults=redraw_defaults))
        compiled.reset_center()
    if own_output is not None and outcome == "passed":
        worst, where = compare_outputs(own_output, _run_eval(model, inputs))
        if worst > VERIFY_TOLERANCE:   # nothing half-applied is left behind: the user's weights, no hooks
            hooks.remove(model)
            model.load_state_dict(before)
            raise CompileError(f"{spec.name} at the base width is not the user's model (TP5 Eq. 4): its {where} "
                               f"differs from the model's own by {worst:.3g} (relative)",
                               hint="report the model with the plan (mupdsl compile --json)")
        plan.checks["base_identity"] = f"passed: at the base width the outputs are the model's own (largest " \
                                       f"relative difference {worst:.2g})"
    return compiled


def _own_run(model: nn.Module, inputs: tuple, model_name: str):
    """:func:`_run_eval` on the user's unchanged model; any exception, or a NaN in the output, is a located
    CompileError naming the example inputs (the model has not been touched yet, so it is the batch's or the
    model's own)."""
    shapes = ", ".join(f"{tuple(x.shape)} {str(x.dtype).replace('torch.', '')}" if isinstance(x, torch.Tensor)
                       else type(x).__name__ for x in inputs)
    hint = ("example_batch(batch_size) must return (inputs, targets) whose inputs the model's forward accepts (or "
            "pass example_inputs= that it accepts)")
    try:
        out = _run_eval(model, inputs)
    except Exception as exc:  # noqa: BLE001 - the user's forward can fail in any way
        raise CompileError(f"{model_name}: the model does not run on its example inputs ({shapes}): "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", hint=hint) from exc
    if any(isinstance(x, torch.Tensor) and x.is_floating_point() and bool(torch.isnan(x).any())
           for x in torch.utils._pytree.tree_leaves(out)):
        raise CompileError(f"{model_name}: the model's own output on its example inputs ({shapes}) holds NaN, so "
                           "no check can compare it", hint="check example_batch(batch_size) (NaN inputs?) and the "
                                                           "model's forward")
    return out


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
