"""Self-checks run on every compile (design.md §3): cheap, and never silent.

* **lint** — what the spec asks for and the analysis could not find: ``alpha ≠ 0`` with no residual block, an
  attention rule with softmaxes but no attention site, readouts that disagree with the output-role tensors,
  width-scaling weights hidden in an opaque module or function, width-dependent constants in the forward.
* **base identity** (TP5 Eq. 4) — a spec written in ratio form (every size enters as a ratio to the base) must be
  the user's model at the base width and depth: every multiplier 1, every init the model's own, one learning
  rate, one ε, one weight decay. Evaluated from the plan's own rules at the base sizes, so it holds at any width;
  a violation names the tensor, the setting and the rule.
* **carried** — the user's module with the plan folded in and its hooks installed gives the outputs of the
  reference graph (the traced graph with every multiplier written out) on the example batch
  (:func:`compare_outputs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import fx, nn

from ..spec import Spec
from ..spec.resolve import network, tensor_rule
from . import hooks
from .analyze import Analysis
from .errors import CompileError, listed
from .plan import Plan

VERIFY_TOLERANCE = 2e-4
"""Largest difference allowed between the compiled model's outputs and the reference graph's, relative to the
largest output (float32 rounding of folded weights is ~1e-6; a misplaced multiplier is ≥ 1e-2)."""

_RATIO_PAIRS = {"width": "base_width", "fan_in": "base_fan_in", "fan_out": "base_fan_out", "depth": "base_depth",
                "d_head": "base_d_head"}
_RATIOS = {"width_mult", "fan_in_mult", "fan_out_mult", "depth_mult", "base", "keep"}
"""Size variables that are 1 at the base size, or the model's own attention scale (``keep``, ``base``)."""


@dataclass
class Findings:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def lint(plan: Plan, analysis: Analysis, spec: Spec) -> Findings:
    out = Findings()
    net = network(spec, plan.optimizer)
    if net.alpha != 0 and not plan.residual_blocks:
        out.warnings.append(f"the spec asks for alpha = {float(net.alpha):g} (residual branches × depth^-alpha) but "
                            "no residual block was found in the model: the branch multiplier does nothing")
    if net.attention is not None and set(net.attention.powers) != {"keep"} and analysis.softmaxes > len(plan.attention):
        missing = analysis.softmaxes - len(plan.attention)
        out.warnings.append(f"the spec sets the attention scale, but {missing} of the model's {analysis.softmaxes} "
                            "softmax(es) were not recognised as attention: their logit scale is left as the model has "
                            "it" + ("" if plan.attention else " (no attention site found at all)"))
    by_name = {t.name: t for t in plan.tensors}
    readout_tensors = set()
    for t in plan.tensors:
        for use in t.use_mults:
            if use in plan.readouts:
                readout_tensors.add(t.name)
    for t in plan.tensors:
        if t.role == "output" and t.name not in readout_tensors and not t.unused:
            out.warnings.append(f"{t.name} has the output role (its fan-out does not scale) but does not reach the "
                                "model's output as the last weight: check the readout")
    for name in readout_tensors:
        t = by_name[name]
        if t.role not in ("output", "embedding", "scalar") and t.scaling_dims:
            out.warnings.append(f"{name} is the last weight before the output but has role {t.role}: its output "
                                "width scales, so it is not a readout the output rules apply to")
    for what in analysis.opaque:
        out.warnings.append(f"{what} hides width-scaling weights from the analysis: their roles were read from "
                            "their shapes; pass example inputs so torch.export can trace it, or check the plan")
    for c in analysis.width_constants:
        out.warnings.append(f"a width-dependent constant in the forward: {c.node!r} (in {c.module or 'the model'!r}) "
                            f"multiplies by {c.value:.6g} at this width and {c.base_value:.6g} at the base width; the "
                            "spec does not see it and its rules apply on top")
    guessed = [t.name for t in plan.tensors if t.guessed]
    if guessed:
        out.warnings.append(f"roles read from shapes only (opaque use): {listed(guessed, 8)}")
    unused = [t.name for t in plan.tensors if t.unused]
    if unused:
        out.warnings.append(f"parameters the forward does not read, planned by their rules all the same: "
                            f"{listed(unused, 8)}")
    return out


def ratio_form(spec: Spec, optimizer: str, tensors: list[tuple[tuple[str, ...], str, bool]]) -> bool:
    """Whether the rules that decide ``tensors`` ((names, role, residual) each: a tensor's own name and its
    aliases) and the network rules use sizes only as ratios to the base, so that at the base width and depth they
    reduce to constants."""
    net = network(spec, optimizer)
    monomials = [net.gamma, net.tau, net.branch] + ([net.attention] if net.attention is not None else [])
    for name, role, residual in tensors:
        rule = tensor_rule(spec, optimizer, name, role, net, residual)
        if rule.init_kind not in ("keep", "base"):
            return False
        monomials += [m for m in (rule.mult, rule.lr, rule.wd, rule.eps, rule.init_scale) if m is not None]
    return all(_is_ratio(m.powers) for m in monomials)


def _is_ratio(powers) -> bool:
    for name, p in powers.items():
        if name in _RATIOS:
            continue
        if name in _RATIO_PAIRS and powers.get(_RATIO_PAIRS[name]) == -p:
            continue
        if name in _RATIO_PAIRS.values() and any(powers.get(k) == -p for k, v in _RATIO_PAIRS.items() if v == name):
            continue
        return False
    return True


def base_identity(plan: Plan, spec: Spec, evaluate_at_base) -> tuple[str, list[str]]:
    """For a ratio-form spec, the plan evaluated at the base width and depth (``evaluate_at_base()`` → a Plan)
    must be the user's model. Returns (outcome, violations)."""
    if not ratio_form(spec, plan.optimizer, [((t.name, *t.tied_to), t.role, t.residual) for t in plan.tensors]):
        return "not required (the spec is not in ratio form: its base model is not the user's)", []
    base = evaluate_at_base()
    problems: list[str] = []
    for t in base.tensors:
        where = t.rules
        if any(not math.isclose(m, 1.0, rel_tol=1e-9) for m in [t.mult, *t.use_mults.values()]):
            problems.append(f"{t.name}: mult {t.mult:g} at the base width ({where.get('mult', t.rule)})")
        if t.init in ("keep", "base") and t.init_scale is not None and not math.isclose(t.init_scale, 1.0, rel_tol=1e-9):
            problems.append(f"{t.name}: init {t.init} × {t.init_scale:g} at the base width ({where.get('init', t.rule)})")
        if t.init == "zero" and t.default_std:
            problems.append(f"{t.name}: zero init where the model draws std {t.default_std:.3g} "
                            f"({where.get('init', t.rule)})")
    trainers = {t.optimizer for t in base.tensors}   # one rate per optimizer (Muon and its fallback differ)
    for key, trainer in ((key, trainer) for key in ("lr", "eps", "wd") for trainer in trainers):
        values = {}
        for t in base.tensors:
            v = getattr(t, key)
            if v is not None and t.optimizer == trainer:
                values.setdefault(round(v, 12), []).append(t)
        if len(values) > 1:
            common = max(values.values(), key=len)
            odd = [t for group in values.values() if group is not common for t in group]
            t = odd[0]
            problems.append(f"{t.name}: {key} {getattr(t, key):g} at the base width, the other tensors' "
                            f"{getattr(common[0], key):g} ({t.rules.get(key, t.rule)})")
    net = base.network
    for key, value in (("gamma", net.gamma), ("branch", net.branch), ("tau", net.tau)):
        if not math.isclose(value, 1.0, rel_tol=1e-9):
            problems.append(f"network {key} = {value:g} at the base size")
    for site in base.attention:
        if not math.isclose(site.factor, 1.0, rel_tol=1e-9):
            problems.append(f"attention at {site.node!r}: scale {site.scale:g} at the base width, the model's own "
                            f"is {site.own_scale:g}")
    if net.center:
        problems.append("center = true: the centered model is not the user's")
    return ("passed" if not problems else "FAILED"), problems


def verify_carried(model: nn.Module, graph: fx.GraphModule, plan: Plan, params: Mapping[str, torch.Tensor],
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


def compare_outputs(reference: Any, product: Any, tolerance: float = 2e-4) -> tuple[float, str]:
    """Largest difference between two model outputs relative to the reference's largest magnitude, and where."""
    worst, where = 0.0, ""
    flat_r = torch.utils._pytree.tree_flatten(reference)[0]
    flat_p = torch.utils._pytree.tree_flatten(product)[0]
    if len(flat_r) != len(flat_p):
        raise CompileError(f"the compiled model returns {len(flat_p)} values, the reference graph {len(flat_r)}")
    for i, (r, p) in enumerate(zip(flat_r, flat_p)):
        if not isinstance(r, torch.Tensor) or not r.is_floating_point():
            continue
        scale = float(r.detach().abs().max()) if r.numel() else 0.0
        diff = float((r.detach() - p.detach()).abs().max()) if r.numel() else 0.0
        rel = diff / max(scale, 1e-4)   # outputs near 0 (a centered model at init) are compared absolutely
        if not math.isfinite(rel) or rel > worst:
            worst, where = rel if math.isfinite(rel) else math.inf, f"output {i} (shape {tuple(r.shape)})"
    return worst, where


__all__ = ["VERIFY_TOLERANCE", "Findings", "base_identity", "compare_outputs", "lint", "ratio_form", "verify_carried"]
