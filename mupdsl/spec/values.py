"""The values a spec's expressions fold to, checked once with symbolic sizes.

A hyperparameter folds to an exact constant; every rule folds to a monomial ``c · Π vᵖ`` (sizes positive), so a
negative learning rate, a zero gamma or an init std no float32 weight can hold is refused at ``check`` time,
whatever the sizes, at the rule's position (docs/language.md, "Limits").
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable, Mapping

from .errors import SourcePos, SpecError, did_you_mean
from .expr import Monomial, to_monomial
from .limits import FLOAT32_MAX, MAX_EXPONENT, exponent_from_float
from .model import (
    ATTENTION_OWN_SCALES, NETWORK_SIZE_VARIABLES, OPTIMIZERS, SIZE_VARIABLES, Expr, Hyper, Init, Spec,
)
from .resolve import network_setting


def constant(expr: Expr, hypers: Mapping[str, Hyper], source: str) -> Fraction:
    def lookup(name: str, node: Expr) -> Monomial:
        if name in hypers:
            return Monomial.const(float(hypers[name].value))
        hint = did_you_mean(name, hypers) or "a hyperparameter's value is a number or uses earlier hyperparameters"
        raise SpecError(f"unknown name '{name}' in hyperparameter value", node.pos, source=source, hint=hint)

    literal = expr.args[0] if expr.kind == "neg" else expr
    if literal.kind == "num":          # a literal keeps its exact value (1e-15 stays 1e-15)
        value = literal.value
        return -value if expr.kind == "neg" else value
    monomial = to_monomial(expr, lookup, source)
    if not math.isfinite(monomial.coef):
        raise SpecError("value is too large for a float", expr.pos, source=source)
    if monomial.coef == 0:
        return Fraction(0)
    exact = Fraction(monomial.coef)
    near = exact.limit_denominator(10**12)   # 0.1 * 3 is 3/10, not the float's binary fraction
    return near if near != 0 and abs(near - exact) <= abs(exact) * Fraction(1, 10**12) else exact


# What each setting may be, read from the sign of its monomial: sizes are positive, so c · Π vᵖ has the sign of c
# and is 0 exactly when c is — known at check time whatever the sizes. Magnitudes are known only for constants.
_NON_NEGATIVE = {"lr": "a learning rate", "wd": "a weight decay", "eps": "Adam's ε", "tau": "the skip factor tau"}
_NON_ZERO = {"mult": "a forward multiplier (a weight multiplied by 0 cannot train)",
             "branch": "the residual branch multiplier (0 switches the branches off: no gradient reaches them)"}
_POSITIVE = {"gamma": "gamma (the output is divided by it)", "attention": "the attention logit scale"}


def _check_value(key: str, m: Monomial, expr: Expr, spec: Spec, src, init: str | None = None) -> None:
    """Refuse a setting whose value is nonsense whatever the sizes: a negative learning rate, std or skip factor, a
    zero multiplier or gamma, a constant init that no float32 weight can hold. ``src``: the source text, or a
    function that reads it (only needed for an error)."""
    problem, allowed = None, None
    if key == "init":
        what = {"normal": "std", "uniform": "std", "keep": "factor", "base": "factor", "const": "value"}[init]
        if what != "value" and m.coef < 0:
            problem = f"the init's {what} is negative ({m})"
            allowed = "an init std (and the factor of keep/base) is 0 or positive"
        elif m.is_const and abs(m.coef) > FLOAT32_MAX:
            problem = f"the init's {what} {m.coef:g} does not fit in a float32 weight"
            allowed = f"a constant init std or value is at most {FLOAT32_MAX:.4g} in magnitude"
    elif key in _NON_NEGATIVE and m.coef < 0:
        problem, allowed = f"'{key}' is negative ({m})", f"{_NON_NEGATIVE[key]} is 0 or positive"
    elif key in _NON_ZERO and m.coef == 0:
        problem, allowed = f"'{key}' is 0", f"{_NON_ZERO[key]} must be non-zero"
    elif key in _POSITIVE and m.coef <= 0:
        problem = f"'{key}' is {'0' if m.coef == 0 else f'negative ({m})'}"
        allowed = f"{_POSITIVE[key]} must be positive"
    elif key == "alpha" and _not_simple(m.coef):
        problem = f"'alpha' is {m.coef:g}"
        allowed = "alpha is an exponent (branch = depth^-alpha): a simple fraction p/q (q at most 10^6), such as 1/2"
    elif key == "alpha" and abs(m.coef) > MAX_EXPONENT:
        problem = f"'alpha' is {m.coef:g}"
        allowed = f"alpha is an exponent (branch = depth^-alpha): at most {MAX_EXPONENT} in magnitude"
    if problem is None:
        return
    if callable(src):
        src = src()
    notes = [(f"{name} = {float(spec.hypers[name].value):g} here", spec.hypers[name].pos)
             for name in sorted(expr.names()) if name in spec.hypers][:3]
    raise SpecError(problem, expr.pos, source=src, hint=allowed, notes=notes)


def check_values(spec: Spec, sources: Mapping[str, str], read_source: Callable[[str], str | None]) -> None:
    """Fold every expression once with symbolic sizes: catches unknown names, division by zero, values out of
    range, and settings that are nonsense whatever the sizes (a negative learning rate, a zero gamma, …)."""
    hyper = {n: Monomial.const(float(h.value)) for n, h in spec.hypers.items()}
    read: dict[str, str | None] = dict(sources)

    def source_of(pos: SourcePos) -> str | None:
        if pos.path not in read:          # a file this one extends: read once, not once per setting
            read[pos.path] = read_source(pos.path)
        return read[pos.path]

    variables: dict[str, Monomial] = {}   # monomials are immutable: one per size variable

    def make_lookup(allowed: tuple[str, ...], context: str, src: str | None):
        def lookup(name: str, node: Expr) -> Monomial:
            if name in hyper:
                return hyper[name]
            if name in allowed:
                if name not in variables:
                    variables[name] = Monomial.var(name)
                return variables[name]
            if name in SIZE_VARIABLES:
                raise SpecError(f"'{name}' is a per-tensor size and cannot be used in {context}", node.pos,
                                source=src, hint=f"{context} may use: {', '.join(allowed)}")
            hint = did_you_mean(name, tuple(hyper) + allowed) or (
                f"known: {', '.join(allowed)}; hyperparameters: {', '.join(sorted(hyper)) or 'none'}")
            raise SpecError(f"unknown name '{name}'", node.pos, source=src, hint=hint)
        return lookup

    alphas: dict[str, Monomial] = {}
    for late in (False, True):  # branch and attention may use alpha, so they are checked once it is known
        if late:   # alpha as network() folds it; alpha itself was checked (a constant, in range) in the first pass
            alphas = {opt: Monomial.const(float(_alpha(spec, opt))) for opt in OPTIMIZERS}
        for ns in spec.network:
            key, value = ns.setting.key, ns.setting.value
            if not isinstance(value, Expr) or (key in ("branch", "attention")) != late:
                continue
            src = source_of(ns.setting.pos)
            allowed = NETWORK_SIZE_VARIABLES
            if late:
                hyper["alpha"] = alphas["sgd" if ns.section == "all" else ns.section]
                allowed += ("alpha",)
            if key == "attention":
                allowed += ATTENTION_OWN_SCALES
            monomial = to_monomial(value, make_lookup(allowed, f"network '{key}'", src), src)
            if not math.isfinite(monomial.coef):
                raise SpecError("value is too large for a float", value.pos, source=src)
            own = [name for name in ATTENTION_OWN_SCALES if name in monomial.powers]
            if own and (len(own) > 1 or monomial.powers[own[0]] != 1):
                raise SpecError("attention may name the model's own scale once, as a factor: keep or base",
                                value.pos, source=src,
                                hint="write `attention = keep`, or `base * base_d_head / d_head` (µP)")
            if key in ("alpha", "tau") and not monomial.is_const:
                raise SpecError(f"network '{key}' must be a constant", ns.setting.pos, source=src,
                                hint="it may use numbers and hyperparameters, not sizes")
            _check_value(key, monomial, value, spec, src)
    tensor_names = SIZE_VARIABLES + ("gamma", "alpha")
    folded_texts: dict[tuple[str, str], Monomial] = {}   # the same text folds the same way (a large spec repeats)
    for rule in spec.rules:
        section = "sgd" if rule.section == "all" else rule.section
        hyper["alpha"] = alphas[section]
        for setting in rule.settings.values():
            init = setting.value.kind if isinstance(setting.value, Init) else None
            expr = setting.value.scale if isinstance(setting.value, Init) else setting.value
            if not isinstance(expr, Expr):
                continue
            folded = folded_texts.get((expr.text, section))
            if folded is None:
                src = source_of(setting.pos)
                folded = to_monomial(expr, make_lookup(tensor_names, "a tensor rule", src), src)
                if not math.isfinite(folded.coef):
                    raise SpecError("value is too large for a float", expr.pos, source=src)
                folded_texts[(expr.text, section)] = folded
            _check_value(setting.key, folded, expr, spec, lambda pos=setting.pos: source_of(pos), init)


def _alpha(spec: Spec, optimizer: str) -> Fraction:
    """The network's alpha for ``optimizer`` (as :func:`~mupdsl.spec.resolve.network` computes it), without
    folding branch and attention, which use it."""
    setting = network_setting(spec, optimizer, "alpha")
    if setting is None:
        return Fraction(0)
    hypers = spec.hyper_values()
    folded = to_monomial(setting.value, lambda name, node: Monomial.const(float(hypers[name])))
    return exponent_from_float(folded.coef)


def _not_simple(value: float) -> bool:
    try:
        exponent_from_float(value)
    except ValueError:
        return True
    return False


__all__ = ["check_values", "constant"]
