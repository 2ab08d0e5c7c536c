"""The plan: what the compiler does to every tensor and to the network, as data you can print, save and diff.

``build_plan`` is a pure function of the analysis, the spec and the sizes: each tensor's rule is resolved by
the spec (most specific first) and evaluated at the tensor's own sizes (fan-in/out read from its op).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel

from ..spec import Spec, SpecError
from ..spec.expr import Monomial
from ..spec.resolve import network, resolve_settings, tensor_rule
from .analyze import Analysis, TensorInfo
from .errors import CompileError


class TensorPlan(BaseModel):
    name: str
    shape: list[int]
    role: str
    scaling_dims: list[int]
    residual: bool
    k: int
    fan_in: int
    fan_out: int
    base_fan_in: int
    base_fan_out: int
    init: str
    init_std: float | None
    """Std of the init (0 for zero and constant inits; for ``keep``/``base``, the model's own init std at this
    width / at the base width, times the factor)."""
    default_std: float | None
    """Std of the model's own init of this tensor at this width, and at the base width (``base_std``)."""
    base_std: float | None
    init_scale: float | None
    """The evaluated argument of the init: std (normal, uniform), factor (keep), value (const)."""
    mult: float
    lr: float
    wd: float | None
    eps: float | None
    rule: str
    """``file:line`` of the most specific rule that decided this tensor."""
    rules: dict[str, str]
    """``file:line`` per setting."""
    tied_to: list[str]
    use_mults: dict[str, float]
    """Forward multiplier per consuming node (differs from ``mult`` only for a tied readout use)."""
    module_level: str | None = None


class NetworkPlan(BaseModel):
    gamma: float
    tau: float
    alpha: float
    branch: float
    attention_scale: float | None
    center: bool
    width: int
    base_width: int
    depth: int
    base_depth: int


class BlockPlan(BaseModel):
    node: str
    skip: str
    branch: str
    params: list[str]
    k: int


class AttentionPlan(BaseModel):
    node: str
    kind: str
    d_head: int
    base_d_head: int
    scale: float | None


class Plan(BaseModel):
    spec: str
    spec_name: str
    model: str
    optimizer: str
    hypers: dict[str, float]
    seed: int
    frontend: str
    tensors: list[TensorPlan]
    network: NetworkPlan
    residual_blocks: list[BlockPlan]
    attention: list[AttentionPlan]
    readouts: list[str]
    leaves: list[str]
    warnings: list[str]

    def tensor(self, name: str) -> TensorPlan:
        for t in self.tensors:
            if t.name == name or name in t.tied_to:
                return t
        raise KeyError(name)

    def to_json_dict(self) -> dict[str, Any]:
        """The document of ``mupdsl compile --json`` (design.md §6, issue contract)."""
        doc = self.model_dump()
        for t in doc["tensors"]:
            t["tied_to"] = t["tied_to"][0] if len(t["tied_to"]) == 1 else (t["tied_to"] or None)
        return doc


def _sizes(info: TensorInfo, net_sizes: dict[str, float]) -> dict[str, float]:
    sizes = dict(net_sizes)
    sizes.update(fan_in=info.fan_in, fan_out=info.fan_out, base_fan_in=info.base_fan_in,
                 base_fan_out=info.base_fan_out, fan_in_mult=info.fan_in / info.base_fan_in,
                 fan_out_mult=info.fan_out / info.base_fan_out, k=info.k)
    return sizes


def _value(m: Monomial | None, sizes: dict[str, float], what: str, name: str) -> float | None:
    if m is None:
        return None
    try:
        value = m.evaluate(sizes)
    except (ZeroDivisionError, OverflowError):
        raise CompileError(f"{what} of {name!r} cannot be evaluated at these sizes ({m})") from None
    if not math.isfinite(value):
        raise CompileError(f"{what} of {name!r} is not finite at these sizes ({m} = {value})")
    return value


def build_plan(spec: Spec, analysis: Analysis, optimizer: str, *, model: str, frontend: str, seed: int, width: int,
               base_width: int, depth: int, base_depth: int, keep_stds: dict[str, float | None],
               base_stds: dict[str, float | None]) -> Plan:
    net = network(spec, optimizer)
    d_head = analysis.attention[0].d_head if analysis.attention else 1
    base_d_head = analysis.attention[0].base_d_head if analysis.attention else 1
    max_k = max((b.k for b in analysis.blocks), default=1)
    net_sizes = dict(width=width, base_width=base_width, width_mult=width / base_width, depth=depth,
                     base_depth=base_depth, depth_mult=depth / base_depth, k=max_k, d_head=d_head,
                     base_d_head=base_d_head, D=analysis.input_dim)
    warnings: list[str] = []
    tensors = []
    for info in analysis.tensors.values():
        sizes = _sizes(info, net_sizes)
        try:
            rule = tensor_rule(spec, optimizer, info.name, info.role, net, residual=info.residual)
        except SpecError as exc:
            raise CompileError(exc.message, hint=exc.hint) from None
        settings = rule.settings
        mult = _value(rule.mult, sizes, "mult", info.name)
        init_scale = _value(rule.init_scale, sizes, "init", info.name)
        if rule.init_kind in ("normal", "uniform"):
            init_std = init_scale
        elif rule.init_kind in ("zero", "const"):
            init_std = 0.0
        else:
            own = (keep_stds if rule.init_kind == "keep" else base_stds).get(info.name)
            init_std = None if own is None else own * (init_scale if init_scale is not None else 1.0)
            if rule.init_kind == "base" and keep_stds.get(info.name) and own is None:
                raise CompileError(f"cannot tell the base-width init std of {info.name!r}",
                                   hint="use keep or an explicit normal(std = …) for it")
        use_mults = {}
        for use in info.uses:
            use_mult = mult
            if use.role != info.role and use.role == "output":  # a tied readout: the output rule's multiplier
                try:
                    out_rule = tensor_rule(spec, optimizer, info.name, "output", net, residual=info.residual)
                except SpecError as exc:
                    raise CompileError(exc.message, hint=exc.hint) from None
                out_sizes = dict(sizes, fan_in=info.fan_out, fan_out=info.fan_in, base_fan_in=info.base_fan_out,
                                 base_fan_out=info.base_fan_in, fan_in_mult=info.fan_out / info.base_fan_out,
                                 fan_out_mult=info.fan_in / info.base_fan_in)
                use_mult = _value(out_rule.mult, out_sizes, "mult", info.name)
                out_lr = _value(out_rule.lr, out_sizes, "lr", info.name)
                own_lr = _value(rule.lr, sizes, "lr", info.name)
                if not math.isclose(out_lr, own_lr, rel_tol=1e-9):
                    warnings.append(f"{info.name} is tied to a readout; its lr follows the {info.role} rule "
                                    f"({own_lr:g}), the output rule would give {out_lr:g}")
            use_mults[use.node] = use_mult
        winners = sorted(settings.values(), key=lambda s: (s.pos.path, s.pos.line))
        best = _most_specific(spec, optimizer, info)
        tensors.append(TensorPlan(
            name=info.name, shape=list(info.shape), role=info.role, scaling_dims=info.scaling_dims,
            residual=info.residual, k=info.k, fan_in=info.fan_in, fan_out=info.fan_out,
            base_fan_in=info.base_fan_in, base_fan_out=info.base_fan_out, init=rule.init_kind,
            init_std=init_std, default_std=keep_stds.get(info.name), base_std=base_stds.get(info.name),
            init_scale=init_scale, mult=mult, lr=_value(rule.lr, sizes, "lr", info.name),
            wd=_value(rule.wd, sizes, "wd", info.name),
            eps=_value(rule.eps, sizes, "eps", info.name) if optimizer != "sgd" else None,
            rule=best or (f"{winners[0].pos.path}:{winners[0].pos.line}" if winners else ""),
            rules={k: f"{s.pos.path}:{s.pos.line}" for k, s in settings.items()},
            tied_to=info.aliases, use_mults=use_mults, module_level=info.module_level))
    _warn_unmatched_globs(spec, optimizer, analysis, warnings)
    attention = []
    for site in analysis.attention:
        scale = None
        if net.attention is not None:
            scale = net.attention.evaluate(dict(net_sizes, d_head=site.d_head, base_d_head=site.base_d_head))
        attention.append(AttentionPlan(node=site.node, kind=site.kind, d_head=site.d_head,
                                       base_d_head=site.base_d_head, scale=scale))
    network_plan = NetworkPlan(
        gamma=net.gamma.evaluate(net_sizes), tau=net.tau.evaluate(net_sizes), alpha=float(net.alpha),
        branch=net.branch.evaluate(net_sizes), attention_scale=attention[0].scale if attention else None,
        center=net.center, width=width, base_width=base_width, depth=depth, base_depth=base_depth)
    return Plan(
        spec=spec.path, spec_name=spec.name, model=model, optimizer=optimizer,
        hypers={k: float(v) for k, v in spec.hyper_values().items()}, seed=seed, frontend=frontend, tensors=tensors,
        network=network_plan,
        residual_blocks=[BlockPlan(node=b.node, skip=b.skip, branch=b.branch, params=b.params, k=b.k)
                         for b in analysis.blocks],
        attention=attention, readouts=analysis.readouts, leaves=analysis.leaves,
        warnings=warnings + analysis.notes)


def _most_specific(spec: Spec, optimizer: str, info: TensorInfo) -> str | None:
    """``file:line`` of the most specific rule among those that decided one of the tensor's settings."""
    from ..spec.resolve import _rank, rule_matches, SECTION_RANK  # noqa: PLC0415 - resolution internals

    matching = [r for r in spec.rules if r.section in SECTION_RANK[optimizer]
                and rule_matches(r, info.name, info.role, info.residual)]
    if not matching:
        return None
    best = max(matching, key=lambda r: _rank(r, optimizer))
    return f"{best.pos.path}:{best.pos.line}"


def _warn_unmatched_globs(spec: Spec, optimizer: str, analysis: Analysis, warnings: list[str]) -> None:
    from ..spec.resolve import SECTION_RANK, rule_matches  # noqa: PLC0415

    for rule in spec.rules:
        if rule.selector.glob is None or rule.section not in SECTION_RANK[optimizer]:
            continue
        names = [(n, t) for t in analysis.tensors.values() for n in [t.name, *t.aliases]]
        if not any(rule_matches(rule, n, t.role, t.residual) for n, t in names):
            warnings.append(f"{rule.pos}: rule {rule.selector} matches no tensor of this model")


__all__ = ["Plan", "TensorPlan", "NetworkPlan", "BlockPlan", "AttentionPlan", "build_plan", "resolve_settings"]
