"""The plan: what the compiler does to every tensor and to the network, as data you can print, save and diff.

``build_plan`` is a pure function of the analysis, the spec and the sizes: each tensor's rule is resolved by
the spec (most specific first) and evaluated at the tensor's own sizes (fan-in/out read from its op).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel

from ..optim.families import ADAFACTORS
from ..spec import Spec, SpecError
from ..spec.expr import Monomial
from ..spec.resolve import (SECTION_RANK, most_specific_rule, network, resolve_settings, rule_matches, tensor_rule,
                            trained_by)
from .analyze import Analysis, TensorInfo
from .errors import CompileError
from .graph import module_of
from .own_init import OwnInit


class Carried(BaseModel):
    """How a tensor's rule is carried on the user's module. The forward multipliers that land on the tensor (its
    own ``mult``, a residual branch's ``depth^-α``, the readout's ``1/γ``, an attention scale change on a query
    projection) are folded into the stored weight, ``W = fold · w``, and the abc-symmetry (TP5 Lemma J.1) moves
    them into its init and optimizer settings so that training is unchanged: init std ``fold · std``; SGD lr
    ``lr · fold²``, wd ``wd / fold²``; Adam (and SignSGD, Lion, Muon) lr ``lr · |fold|``, ε ``ε / |fold|``, wd
    ``wd / fold²`` (L2) or ``wd / |fold|`` (decoupled); Adafactor lr and wd unchanged, ε₁ ``ε / |fold|``, ε₂
    ``ε₂ · |fold|`` (:func:`mupdsl.optim.fold_settings`). The optimizer takes these; the model runs with no
    multiplier."""

    fold: float
    init_std: float | None
    init_scale: float | None
    lr: float
    wd: float | None
    eps: float | None
    sources: list[str]
    """What ``fold`` is made of, e.g. ``mult 0.25``, ``branch 0.71 (blocks.3 residual sum)``, ``1/gamma``."""


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
    guessed: bool = False
    """The role was read from the shape alone: an opaque leaf module or function uses the tensor."""
    unused: bool = False
    """The model's forward never reads the tensor; it gets its rule all the same."""
    optimizer: str | None = None
    """The optimizer that trains the tensor when the plan's trains only some (Muon: ``muon`` or its fallback)."""
    carried: Carried | None = None
    own_init: OwnInit | None = None
    """The model's own init of the tensor (recorded on ``meta``), which ``keep``/``base`` re-draw after
    ``to_empty()``."""


class RuntimeMult(BaseModel):
    """A multiplier that cannot be folded into a weight, carried by a forward hook (or pre-hook) on a module of
    the user's model: ``output`` — the module's output (at ``path`` for the root's structured output) times
    ``factor`` (on ``features`` of dimension ``dim`` only, when given: the query's columns of a fused ``qkv``);
    ``input`` — its first argument; ``skip`` — ``out + (factor − 1)·input`` (a skip factor τ); ``center`` —
    ``f(x; θ) − f(x; θ₀)``; ``attention`` — an ``nn.MultiheadAttention`` whose query (a slice of its
    ``in_proj_weight``) is multiplied by the factor inside its forward."""

    module: str
    kind: str
    factor: float
    reason: str
    features: list[int] | None = None
    dim: int = -1
    path: list[str | int] = []


class OutputScale(BaseModel):
    """A factor a structural multiplier (an attention scale change, a branch multiplier) puts on an op's output when
    it is carried there — the query projection's output is then the query *times* the scale change. Coordinate
    checks divide it back out to record the spec's own values."""

    node: str
    factor: float
    features: list[int] | None = None


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


class BranchPlan(BaseModel):
    node: str
    add: str
    k: int
    params: list[str]
    carried_by: str = ""


class BlockPlan(BaseModel):
    node: str
    skip: str
    k: int
    params: list[str]
    branches: list[BranchPlan]
    module: str = ""


class AttentionPlan(BaseModel):
    node: str
    kind: str
    d_head: int
    base_d_head: int
    own_scale: float
    base_own_scale: float
    scale: float
    """The logit scale the spec asks for; it replaces ``own_scale`` (the model's own)."""
    factor: float
    """``scale / own_scale``: what the query is multiplied by."""
    module: str = ""
    carried_by: str = ""
    operands: list[str] = []
    """The graph nodes the query's and the key's paths start from (the projections' outputs)."""


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
    runtime: list[RuntimeMult] = []
    output_scales: list[OutputScale] = []
    checks: dict[str, str] = {}
    """Self-checks run on this compile and their outcome (``base_identity``, ``carried``)."""

    def tensor(self, name: str) -> TensorPlan:
        for t in self.tensors:
            if t.name == name or name in t.tied_to:
                return t
        raise KeyError(name)

    def to_json_dict(self) -> dict[str, Any]:
        """The document of ``mupdsl compile --json`` (design.md §6)."""
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
               base_stds: dict[str, float | None], own_inits: dict[str, OwnInit | None] | None = None) -> Plan:
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
        names = (info.name, *info.aliases) if info.aliases else info.name   # a rule may name a tied alias
        by = trained_by(spec, optimizer, names, info.role, info.residual)
        if by == "muon" and len(info.shape) < 2:
            owner = resolve_settings(spec, "muon", names, info.role, info.residual).get("muon")
            raise CompileError(f"{info.name} (shape {list(info.shape)}, role {info.role}) is Muon's by the spec, but "
                               "Muon orthogonalises matrices", hint="give it to the fallback: muon { \"" + info.name
                               + "\" { muon = false } }" + (f" (the rule at {owner.pos} gives it to Muon)" if owner
                                                            else ""))
        try:
            rule = tensor_rule(spec, optimizer, names, info.role, net, residual=info.residual)
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
                                   hint="pass a builder as base= (apply) so the base model is built and its init read, "
                                        "or give the tensor keep or an explicit normal(std = …)")
        use_mults = {}
        for use in info.uses:
            use_mult = mult
            if use.role != info.role and use.role == "output":  # a tied readout: the output rule's multiplier
                try:
                    out_rule = tensor_rule(spec, optimizer, names, "output", net, residual=info.residual)
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
            eps=_value(rule.eps, sizes, "eps", info.name) if by in ("adam", "adamw") + ADAFACTORS else None,
            rule=best or (f"{winners[0].pos.path}:{winners[0].pos.line}" if winners else ""),
            rules={k: f"{s.pos.path}:{s.pos.line}" for k, s in settings.items()},
            tied_to=info.aliases, use_mults=use_mults, module_level=info.module_level, guessed=info.guessed,
            unused=info.unused, own_init=(own_inits or {}).get(info.name),
            optimizer=by if optimizer == "muon" else None))
    _warn_unmatched_globs(spec, optimizer, analysis, warnings)
    attention = []
    for site in analysis.attention:
        sizes = dict(net_sizes, d_head=site.d_head, base_d_head=site.base_d_head, keep=site.own_scale,
                     base=site.base_own_scale)
        scale = site.own_scale if net.attention is None else _value(net.attention, sizes, "attention", site.node)
        if site.own_scale == 0:
            raise CompileError(f"the attention at {site.node!r} has a logit scale of 0", hint="report the model")
        attention.append(AttentionPlan(node=site.node, kind=site.kind, d_head=site.d_head,
                                       base_d_head=site.base_d_head, own_scale=site.own_scale,
                                       base_own_scale=site.base_own_scale, scale=scale,
                                       factor=scale / site.own_scale, module=module_of(site.site.node),
                                       operands=list(dict.fromkeys([site.site.q.source.name,
                                                                    site.site.k.source.name]))))
    network_plan = NetworkPlan(
        gamma=_value(net.gamma, net_sizes, "gamma", "the network"), tau=_value(net.tau, net_sizes, "tau", "the network"),
        alpha=float(net.alpha), branch=_value(net.branch, net_sizes, "branch", "the network"),
        attention_scale=attention[0].scale if attention else None,
        center=net.center, width=width, base_width=base_width, depth=depth, base_depth=base_depth)
    if network_plan.gamma == 0:
        raise CompileError("gamma is 0 at these sizes: the output 1/gamma is undefined",
                           hint="give gamma (or gamma0) a non-zero value")
    blocks = [BlockPlan(node=b.node.name, skip=b.skip.name, k=b.k, params=b.params, module=module_of(b.node),
                        branches=[BranchPlan(node=br.node.name, add=br.add.name, k=br.k, params=br.params)
                                  for br in b.branches])
              for b in analysis.blocks]
    return Plan(
        spec=spec.path, spec_name=spec.name, model=model, optimizer=optimizer,
        hypers={k: float(v) for k, v in spec.hyper_values().items()}, seed=seed, frontend=frontend, tensors=tensors,
        network=network_plan, residual_blocks=blocks, attention=attention, readouts=analysis.readouts,
        leaves=analysis.leaves, warnings=warnings + analysis.notes)


def _most_specific(spec: Spec, optimizer: str, info: TensorInfo) -> str | None:
    """``file:line`` of the most specific rule among those that decided one of the tensor's settings."""
    best = most_specific_rule(spec, optimizer, (info.name, *info.aliases), info.role, info.residual)
    return None if best is None else f"{best.pos.path}:{best.pos.line}"


def _warn_unmatched_globs(spec: Spec, optimizer: str, analysis: Analysis, warnings: list[str]) -> None:
    for rule in spec.rules:
        if rule.selector.glob is None or rule.section not in SECTION_RANK[optimizer]:
            continue
        names = [(n, t) for t in analysis.tensors.values() for n in [t.name, *t.aliases]]
        if not any(rule_matches(rule, n, t.role, t.residual) for n, t in names):
            warnings.append(f"{rule.pos}: rule {rule.selector} matches no tensor of this model")


_COMPARED = ("role", "init", "init_std", "mult", "lr", "wd", "eps", "residual", "scaling_dims", "shape", "optimizer")


def plan_differences(saved: Plan, current: Plan) -> list[str]:
    """What differs between two plans of one model: sizes, optimizer, network settings, per-tensor settings."""
    out = []
    for key in ("optimizer", "spec_name"):
        if getattr(saved, key) != getattr(current, key):
            out.append(f"{key}: {getattr(saved, key)} -> {getattr(current, key)}")
    for key, value in saved.network.model_dump().items():
        new = getattr(current.network, key)
        if not _same(value, new):
            out.append(f"network {key}: {value} -> {new}")
    mine = {t.name: t for t in current.tensors}
    for t in saved.tensors:
        other = mine.pop(t.name, None)
        if other is None:
            out.append(f"{t.name}: in the checkpoint, not in the model")
            continue
        for key in _COMPARED:
            a, b = getattr(t, key), getattr(other, key)
            if not _same(a, b):
                out.append(f"{t.name}: {key} {a} -> {b}")
    out += [f"{name}: in the model, not in the checkpoint" for name in mine]
    for a, b in zip(saved.attention, current.attention):
        if not _same(a.scale, b.scale):
            out.append(f"attention at {a.node}: scale {a.scale} -> {b.scale}")
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)
    return a == b


__all__ = ["AttentionPlan", "BlockPlan", "BranchPlan", "Carried", "NetworkPlan", "OutputScale", "Plan", "RuntimeMult",
           "TensorPlan",
           "build_plan", "plan_differences", "resolve_settings"]
