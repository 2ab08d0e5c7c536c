"""Initialising the user's model by a plan, in place, and the optimizer parameter groups that go with it.

Every tensor is drawn by its :class:`~mupdsl.compile.plan.Carried` init (the spec's init with the folded
multipliers in it), from its own generator seeded by ``(seed, name)``: the values do not depend on the order of the
parameters nor on the caller's random state, and a sharded parameter (an FSDP2 ``DTensor``) gets exactly the values
the unsharded tensor would get — the full tensor is drawn and each rank keeps its shard. ``keep`` and ``base`` scale
the model's own init in place; after ``to_empty()`` (a model built on ``meta``) that init is first drawn again
from its record (:class:`~mupdsl.compile.own_init.OwnInit`, read when the spec was applied on ``meta``).
"""

from __future__ import annotations

import inspect
import math
import warnings
import zlib
from typing import Any

import torch
from torch import nn

from ..optim import Combined, Lion, Muon, SignSGD, adafactor_class, muon_class, torch_muon_groups
from ..optim.families import ADAFACTOR_EPS2, ADAFACTORS, CLASS_FAMILY, DECOUPLED_DECAY, FAMILY, SIGN_CLASSES
from .errors import CompileError, listed
from .plan import Plan, TensorPlan

DECOUPLED_CLASSES = ("AdamW", "SignSGD", "Lion", "Muon", "Adafactor", "Combined")
"""Classes whose weight decay is ``p ← p (1 − lr λ)`` (the others add ``λ p`` to the gradient)."""


def tensor_seed(seed: int, name: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


def _generator(seed: int, name: str, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(tensor_seed(seed, name))


def _is_dtensor(p: torch.Tensor) -> bool:
    return type(p).__name__ == "DTensor" and hasattr(p, "device_mesh")


def _fill(p: torch.Tensor, fill, generator_for) -> None:
    """``fill(tensor, generator)`` on ``p``; a DTensor gets its shard of the full tensor's draw (each rank draws
    the whole tensor from the same seeded generator and keeps its part, so the values do not depend on the
    sharding)."""
    if _is_dtensor(p):
        from torch.distributed.tensor import distribute_tensor  # noqa: PLC0415 - only for sharded models

        full = torch.empty(p.shape, dtype=p.dtype, device=p.to_local().device)
        fill(full, generator_for(full.device))
        p.copy_(distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None))
        return
    fill(p, generator_for(p.device))


def _draw(p: torch.Tensor, kind: str, scale: float, generator_for) -> None:
    """Fill ``p`` (plain or sharded) with a draw of ``kind``."""
    if _is_dtensor(p):
        _fill(p, lambda t, g: _draw(t, kind, scale, lambda device: g), generator_for)
        return
    if kind == "normal":
        p.normal_(0.0, scale, generator=generator_for(p.device))
    elif kind == "uniform":
        bound = math.sqrt(3.0) * scale
        p.uniform_(-bound, bound, generator=generator_for(p.device))
    elif kind == "zero":
        p.zero_()
    elif kind == "const":
        p.fill_(scale)


@torch.no_grad()
def initialize(model: nn.Module, plan: Plan, seed: int = 0, *, redraw_defaults: bool = False) -> list[str]:
    """Draw every parameter of ``model`` by the plan's carried init, in place. ``redraw_defaults``: the model's
    own init is gone (``to_empty()`` after a ``meta`` build), so ``keep``/``base`` tensors are drawn from their
    recorded own init first (:mod:`~mupdsl.compile.own_init`). Returns notes."""
    notes: list[str] = []
    if redraw_defaults:
        notes += _retie(model, plan) + _restore_buffers(model)
    for t in plan.tensors:
        p = model.get_parameter(t.name)
        if p.device.type == "meta":
            continue
        carried = t.carried
        scale = carried.init_scale if carried is not None else t.init_scale
        generator_for = lambda device, name=t.name: _generator(seed, name, device)  # noqa: E731
        if t.init in ("normal", "uniform", "zero", "const"):
            _draw(p, t.init, 0.0 if scale is None else float(scale), generator_for)
            continue
        factor = 1.0 if scale is None else float(scale)
        if t.init == "base" and t.default_std and t.base_std is not None and t.base_std != t.default_std:
            factor *= t.base_std / t.default_std
        if redraw_defaults:
            if t.own_init is None:
                raise CompileError(f"{t.name}: its rule keeps the model's own init ({t.init}), which was not recorded "
                                   "(a model built with values, or an init the recorder does not read)",
                                   hint="apply the spec to the model while it is on meta, or give the tensor an "
                                        "explicit init (normal(std = …), zero, const(value = …))")
            if factor > 0:   # the plan's factor drawn with it: one pass over the tensor
                _fill(p, t.own_init.scaled(factor).draw, generator_for)
                continue
            _fill(p, t.own_init.draw, generator_for)
        if factor != 1.0:
            p.mul_(factor)
    return notes


def _retie(model: nn.Module, plan: Plan) -> list[str]:
    """``to_empty()`` gives every module its own tensor, which unties a readout tied to its embedding: tie again."""
    notes = []
    for t in plan.tensors:
        canonical = model.get_parameter(t.name)
        for alias in t.tied_to:
            owner_name, _, local = alias.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            if getattr(owner, local) is not canonical:
                setattr(owner, local, canonical)
                notes.append(f"{alias} tied to {t.name} again (to_empty had untied it)")
    return notes


def _restore_buffers(model: nn.Module) -> list[str]:
    """Buffers computed when the model was built (rotary frequencies, BatchNorm statistics) are garbage after
    ``to_empty()``: each module that holds some is re-initialised by the model's own routine (HuggingFace's
    ``_init_weights``, else the module's ``reset_running_stats`` / ``reset_parameters``); the parameters are drawn
    by the plan after this. Buffers nothing restores are named."""
    hf = getattr(model, "_init_weights", None)
    left = []
    for name, module in model.named_modules():
        own = list(module.named_buffers(recurse=False))
        if not own:
            continue
        flags = [b for _, b in own if getattr(b, "_is_hf_initialized", False)]
        for b in flags:
            b._is_hf_initialized = False
        try:
            before = [b.clone() for _, b in own]
            if hf is not None:
                hf(module)
            elif hasattr(module, "reset_running_stats"):
                module.reset_running_stats()
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()
            unchanged = [f"{name}.{b_name}" if name else b_name for (b_name, b), old in zip(own, before)
                         if b.numel() and torch.equal(b, old)]
            if hf is None and not (hasattr(module, "reset_running_stats") or hasattr(module, "reset_parameters")):
                left += [f"{name}.{b_name}" if name else b_name for b_name, _ in own]
            elif hf is not None:
                left += unchanged
        finally:
            for b in flags:
                b._is_hf_initialized = True
    if not left:
        return []
    return [f"buffers not restored after to_empty (they hold what the memory held): {listed(left, 6)}; set them, "
            "or build the model on the CPU"]


def check_coverage(model: nn.Module, plan: Plan) -> None:
    """Refuse a model whose parameters are no longer the plan's: a tensor the plan names that the model lacks
    (deleted or renamed since it was compiled), or a trainable parameter the plan does not cover (added since):
    the optimizer would fail on the first, and would silently never train the second. Frozen parameters
    (``requires_grad`` false) outside the plan are left alone."""
    missing = [t.name for t in plan.tensors if not _has_parameter(model, t.name)]
    planned = {id(model.get_parameter(t.name)) for t in plan.tensors if t.name not in missing}
    added = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in planned]
    if missing:
        raise CompileError(f"the plan names {listed([repr(n) for n in missing], 5)}, which the model no longer has",
                           hint="compile again after changing the model (mupdsl.compile.apply)")
    if added:
        raise CompileError(f"the model has trainable parameters the plan does not cover: {listed([repr(n) for n in added], 5)}; the "
                           "optimizer would never train them", hint="compile again after adding them (their rules "
                           "come from the spec), or freeze them (requires_grad_(False)) if they are not to be trained")


def _has_parameter(model: nn.Module, name: str) -> bool:
    try:
        model.get_parameter(name)
    except AttributeError:
        return False
    return True


def param_groups(model: nn.Module, plan: Plan) -> list[dict[str, Any]]:
    """Optimizer parameter groups with the plan's carried lr, weight decay and ε; tensors with equal settings
    share a group (``names`` lists them). Parameters are looked up by name on ``model`` now, so groups built after
    ``fully_shard`` hold its sharded parameters. Under Muon each group also says which optimizer trains it
    (``optimizer``: ``muon`` or the fallback); Adafactor's ``eps`` is its pair (ε₁, ε₂) with ε₂ folded, and its
    ``scale_parameter`` says whether the step is scaled by RMS(p) (``adafactor``) or not (``adafactor_unscaled``)."""
    check_coverage(model, plan)
    groups: dict[tuple, dict[str, Any]] = {}
    for t in plan.tensors:
        c = t.carried
        lr, wd, eps = (c.lr, c.wd, c.eps) if c is not None else (t.lr, t.wd, t.eps)
        by = t.optimizer or plan.optimizer
        eps2 = ADAFACTOR_EPS2 * abs(c.fold if c is not None else 1.0) if by in ADAFACTORS else None
        key = (by, lr, wd, eps, eps2)
        if key not in groups:
            group: dict[str, Any] = {"params": [], "names": [], "lr": lr, "weight_decay": wd or 0.0}
            if by in ADAFACTORS:
                group["eps"] = (eps, eps2 if by == "adafactor" else ADAFACTOR_EPS2)
                group["scale_parameter"] = by == "adafactor"
            elif by != "sgd" and eps is not None:
                group["eps"] = eps
            if plan.optimizer == "muon":
                group["optimizer"] = by
            groups[key] = group
        groups[key]["params"].append(model.get_parameter(t.name))
        groups[key]["names"].append(t.name)
    return list(groups.values())


def _default_class(optimizer: str) -> type:
    """The class that runs ``optimizer`` (a CompileError naming the torch release where the installed one lacks it)."""
    if optimizer in ADAFACTORS:
        return adafactor_class()
    return {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "signsgd": SignSGD,
            "lion": Lion, "muon": muon_class()}[optimizer]


def sign_optimizer(cls: type) -> str | None:
    """The sign-based spec optimizer a class runs: ``lion`` or ``signsgd`` for mupdsl's classes and their
    subclasses, or a class of another package by its name (:data:`SIGN_CLASSES`); None otherwise."""
    for base, name in ((Lion, "lion"), (SignSGD, "signsgd")):
        if isinstance(cls, type) and issubclass(cls, base):
            return name
    return SIGN_CLASSES.get(cls.__name__)


def _check_family(cls: type, optimizer: str, plan: Plan, names: set[str] | None = None) -> None:
    """Refuse a class that would train the plan differently: another optimizer family (the plan's rates are that
    family's rules, and its multipliers are folded into that family's settings), a Muon class for a plan that is
    not Muon's, weight decay the other way (decoupled vs L2); a class of unknown family only when multipliers are
    folded. ``names``: the tensors it trains (default all)."""
    tensors = [t for t in plan.tensors if names is None or t.name in names]
    family = CLASS_FAMILY.get(cls.__name__)
    if optimizer in ADAFACTORS and cls.__name__ != "Adafactor":
        raise CompileError(f"{cls.__name__}: the plan was compiled for {optimizer}; its groups hold Adafactor's "
                           "settings (ε₁ and ε₂, scale_parameter)", hint="pass an Adafactor class (mupdsl.optim, "
                           "transformers), or compile with --optimizer for this optimizer")
    if cls.__name__ == "Muon" and optimizer != "muon":
        raise CompileError(f"{cls.__name__}: the plan was compiled for {optimizer}; Muon orthogonalises matrices "
                           "and has rules of its own", hint="compile with --optimizer muon (a muon section decides "
                                                             "which tensors it owns)")
    runs = sign_optimizer(cls)
    family = family or ("adam" if runs else None)
    known = runs is not None or cls.__name__ in CLASS_FAMILY
    if known and (runs or optimizer in SIGN_CLASSES.values()) and runs != optimizer:
        raise CompileError(f"{cls.__name__}: the plan was compiled for {optimizer}"
                           + (f" and {cls.__name__} runs {runs}" if runs else "")
                           + "; a sign-based plan and class go together only with their own optimizer (their rates "
                           "are that section's rules, and a sign has no ε for the plan to carry)",
                           hint=f"compile with --optimizer {runs}" if runs else
                           f"pass mupdsl.optim.{'SignSGD' if optimizer == 'signsgd' else 'Lion'} (compiled.optimizer() "
                           "without cls), or compile with --optimizer for the class you train with")
    if family == "adafactor" and optimizer == "adafactor_unscaled":
        if "scale_parameter" not in inspect.signature(cls.__init__).parameters:
            raise CompileError(f"{cls.__module__}.{cls.__name__} always scales its step by RMS(p); the plan is for "
                               "Adafactor without parameter scaling (adafactor_unscaled)",
                               hint="use mupdsl.optim.Adafactor (compiled.optimizer() without cls), or compile "
                                    "with --optimizer adafactor")
        family = "adam"      # its groups say scale_parameter=False: lr times a scale-free step, as Adam's
    folded = any(t.carried is not None and t.carried.fold != 1.0 for t in tensors)
    wanted = FAMILY[optimizer]
    if family != wanted and (family is not None or folded):
        raise CompileError(f"{cls.__name__}: the plan was compiled for {optimizer}: its learning rates are "
                           f"{optimizer}'s rules" + (f" and its multipliers are folded into {optimizer}'s settings"
                                                     if folded else "") + "; "
                           + ("an unknown optimizer family" if family is None else f"{cls.__name__} is {family}-like"),
                           hint=f"compile with --optimizer for this optimizer's family, or use a {wanted}-like class")
    if cls is getattr(torch.optim, "Adafactor", None):
        warnings.warn("torch.optim.Adafactor caps its relative step at min(lr, 1/√t): rates above the cap train "
                      "alike (η0 = 1 and η0 = 4 give the same weights), and per-tensor rate rules hold only while "
                      "η·factor < 1/√t. The plan's class, mupdsl.optim.Adafactor (compiled.optimizer() without cls), "
                      "lets the rate multiply the step", stacklevel=3)
    decoupled = cls.__name__ in DECOUPLED_CLASSES
    if family == "adam" and optimizer != "sgd" and decoupled != (optimizer in DECOUPLED_DECAY) and \
            any((t.carried.wd if t.carried else t.wd) for t in tensors):
        raise CompileError(f"{cls.__name__} decays weights {'decoupled' if decoupled else 'as L2'}, the plan "
                           f"({optimizer}) the other way", hint="compile for the optimizer you train with")


def _build(cls: type, groups: list[dict[str, Any]], **kwargs) -> torch.optim.Optimizer:
    """``cls`` over ``groups``, keeping only the keys its constructor takes (ε for SGD is left out)."""
    signature = inspect.signature(cls.__init__).parameters
    accepted = set(signature)
    unknown = [k for k in kwargs if k not in accepted]
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values()):
        takes = [k for k in signature if k not in ("self", "params", "lr", "weight_decay", "eps", "scale_parameter")]
        raise CompileError(f"{cls.__module__}.{cls.__name__} takes no {', '.join(unknown)}",
                           hint=f"it takes {', '.join(takes) or 'no other settings'}")
    groups = [{k: v for k, v in g.items() if k in ("params", "names", "lr") or k in accepted} for g in groups]
    _check_kwargs(cls, groups, kwargs)
    if "lr" not in accepted:
        for g in groups:
            g.pop("lr", None)
    return cls(groups, **({"lr": groups[0]["lr"]} if groups and "lr" in accepted and "lr" not in kwargs else {}),
               **kwargs)


def optimizer_for(model: nn.Module, plan: Plan, cls: type | None = None, **kwargs) -> torch.optim.Optimizer:
    """The plan's optimizer over :func:`param_groups`: ``cls`` is any ``torch.optim`` class (default: the plan's
    SGD, Adam, AdamW, Adafactor, or mupdsl's SignSGD / Lion). Its family must fold multipliers as the plan's does,
    else a folded plan would train differently; keys the class does not take (ε for SGD) are left out.

    A Muon plan gives a :class:`~mupdsl.optim.Combined` optimizer: ``torch.optim.Muon`` (mupdsl's :class:`Muon`
    where torch lacks it, and for tensors of more than two dimensions) for the tensors Muon owns — with torch's shape
    factor divided out, since the plan's rates hold the spec's — and the fallback for the rest; ``kwargs`` go to
    Muon, ``fallback_kwargs={...}`` to the fallback."""
    fallback_kwargs = kwargs.pop("fallback_kwargs", None)
    _check_adjust_lr(kwargs)
    if plan.optimizer == "muon":
        return _muon_optimizer(model, plan, cls, fallback_kwargs or {}, kwargs)
    if fallback_kwargs is not None:
        raise CompileError(f"fallback_kwargs is for a Muon plan's fallback optimizer; this plan is {plan.optimizer}'s",
                           hint="pass the keyword arguments directly")
    cls = cls or _default_class(plan.optimizer)
    _check_family(cls, plan.optimizer, plan)
    groups = param_groups(model, plan)
    if plan.optimizer in ADAFACTORS:
        groups = _huggingface_adafactor_groups(cls, groups, kwargs)
    return _build(cls, groups, **kwargs)


def _huggingface_adafactor_groups(cls: type, groups: list[dict[str, Any]], kwargs: dict) -> list[dict[str, Any]]:
    """Groups for HuggingFace's ``transformers.Adafactor`` (recognised by its ``relative_step``), which runs the same
    algorithm with other conventions: ``relative_step=True`` replaces the rate by min(10⁻², 1/√t), so it must be
    off; its ε₁ is added to g² where mupdsl floors g²'s means and v̂ at ε₁², so it takes ε₁² (for the default ε₁,
    float32's machine epsilon, its square) — the same step while g² ≫ ε₁², nearly the same below; and it decays
    weights by the parameter-scaled rate, which no plan's weight decay means. Other classes get ``groups``."""
    params = inspect.signature(cls.__init__).parameters
    if "relative_step" not in params:
        return groups
    if kwargs.get("relative_step", params["relative_step"].default):
        raise CompileError(f"{cls.__name__}(relative_step=True) replaces the learning rate by min(1e-2, 1/√t), so "
                           "the plan's per-tensor rates would not be used", hint="pass relative_step=False")
    if any(g["weight_decay"] and g.get("scale_parameter", True) for g in groups):
        raise CompileError(f"{cls.__name__} decays weights by lr·RMS(p)·wd per step, the plan by lr·wd",
                           hint="use mupdsl.optim.Adafactor (compiled.optimizer() without cls)")
    machine = torch.finfo(torch.float32).eps
    return [{**g, "eps": ((machine if g["eps"][0] is None else g["eps"][0]) ** 2, g["eps"][1])} for g in groups]


PLAN_KEYS = {"lr": "lr", "weight_decay": "wd", "eps": "eps"}
"""Optimizer settings the plan sets per tensor, with the spec key that sets them."""


def _check_kwargs(cls: type, groups: list[dict[str, Any]], kwargs: dict) -> None:
    """Refuse a keyword argument that a group sets: each group's value overrides the constructor's default, so it
    would be ignored silently."""
    for key in kwargs:
        if any(key in g for g in groups):
            spec_key = PLAN_KEYS.get(key)
            hint = (f"the spec's {spec_key} rules set it (a preset scales eta0, wd0 or eps0: --set NAME=…)"
                    if spec_key else "compile with --optimizer adafactor (scaled by RMS(p)) or adafactor_unscaled")
            raise CompileError(f"{cls.__name__}({key}={kwargs[key]!r}): the plan sets {key} for every tensor, so "
                               f"the optimizer would ignore this", hint=hint)


def _check_adjust_lr(kwargs: dict) -> None:
    """torch.optim.Muon's ``adjust_lr_fn`` other than ``original`` (or None, its default, which means it) would scale
    the spec's rate a second time."""
    if kwargs.get("adjust_lr_fn", "original") not in ("original", None):
        raise CompileError(f"adjust_lr_fn={kwargs['adjust_lr_fn']!r}: the spec's Muon rate is the whole rate, and "
                           "mupdsl divides torch.optim.Muon's own shape factor back out",
                           hint="write the factor in the spec instead (sp_muon_rms is match_rms_adamw's)")


def _without_shape_factor(cls: type, kwargs: dict) -> dict:
    """``kwargs`` less ``adjust_lr_fn`` for a Muon class without torch's shape factor (mupdsl's): with the only values
    :func:`_check_adjust_lr` lets through (original, None) it has nothing to adjust."""
    if "adjust_lr_fn" in inspect.signature(cls.__init__).parameters:
        return kwargs
    return {k: v for k, v in kwargs.items() if k != "adjust_lr_fn"}


def _muon_optimizer(model: nn.Module, plan: Plan, cls: type | None, fallback_kwargs: dict, kwargs: dict) -> Combined:
    if not 0 <= kwargs.get("momentum", 0) < 1:
        raise CompileError(f"Muon(momentum={kwargs['momentum']!r}): Muon's buffer B ← μB + (1 − μ)G needs μ in "
                           "[0, 1); at 1 it never takes a gradient and Muon's tensors do not train",
                           hint="0.95 is torch's and Keller Jordan's default")
    groups = param_groups(model, plan)
    owned = [g for g in groups if g["optimizer"] == "muon"]
    rest = [g for g in groups if g["optimizer"] != "muon"]
    parts: dict[str, torch.optim.Optimizer] = {}
    cls = cls or muon_class()
    if cls.__name__ != "Muon":
        raise CompileError(f"{cls.__name__}: a Muon plan trains its matrices with Muon",
                           hint="pass cls=torch.optim.Muon or mupdsl.optim.Muon, or nothing")
    matrices = [{**g, "params": [p for p in g["params"] if p.ndim == 2],
                 "names": [n for p, n in zip(g["params"], g["names"]) if p.ndim == 2]} for g in owned]
    kernels = [{**g, "params": [p for p in g["params"] if p.ndim > 2],
                "names": [n for p, n in zip(g["params"], g["names"]) if p.ndim > 2]} for g in owned]
    matrices, kernels = [g for g in matrices if g["params"]], [g for g in kernels if g["params"]]
    if cls is getattr(torch.optim, "Muon", None):
        if matrices:
            parts["muon"] = _build(cls, torch_muon_groups(matrices), **{**kwargs, "adjust_lr_fn": "original"})
        if kernels:
            parts["muon_kernels"] = _build(Muon, kernels, **_without_shape_factor(Muon, kwargs))
    elif owned:
        parts["muon"] = _build(cls, matrices + kernels, **_without_shape_factor(cls, kwargs))
    if rest:
        fallback = rest[0]["optimizer"]
        fallback_cls = _default_class(fallback)
        _check_family(fallback_cls, fallback, plan, {n for g in rest for n in g["names"]})
        parts[fallback] = _build(fallback_cls, rest, **fallback_kwargs)
    return Combined(parts)


__all__ = ["check_coverage", "initialize", "optimizer_for", "param_groups", "tensor_seed", "TensorPlan"]
