"""Expressions as monomials: ``coef · Π var^p`` with exact rational exponents.

Every ``.param`` expression is a product of powers (design.md §2), so it is one :class:`Monomial` once the
hyperparameters are known. From a monomial come its value at given sizes and its width/depth exponent
(the a, b, c of an abc-parametrization, TP4 §2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Mapping

from .errors import SpecError
from .model import Expr


@dataclass(frozen=True)
class Monomial:
    """``coef · Π_v v^powers[v]`` over size variables; hyperparameters are folded into ``coef``."""

    coef: float = 1.0
    powers: Mapping[str, Fraction] = field(default_factory=dict)

    @staticmethod
    def const(value: float) -> "Monomial":
        return Monomial(float(value), {})

    @staticmethod
    def var(name: str) -> "Monomial":
        return Monomial(1.0, {name: Fraction(1)})

    def __mul__(self, other: "Monomial") -> "Monomial":
        if not (math.isfinite(self.coef) and math.isfinite(other.coef)):
            raise OverflowError("non-finite coefficient")
        powers = dict(self.powers)
        for name, p in other.powers.items():
            powers[name] = powers.get(name, Fraction(0)) + p
        return Monomial(self.coef * other.coef, {n: p for n, p in powers.items() if p != 0})

    def __truediv__(self, other: "Monomial") -> "Monomial":
        return self * other.pow(Fraction(-1))

    def pow(self, p: Fraction) -> "Monomial":
        """Raise to an exact rational power (the caller rules out 0^negative and negative^fraction)."""
        return Monomial(_power(self.coef, p), {n: q * p for n, q in self.powers.items() if q * p != 0})

    @property
    def is_const(self) -> bool:
        return not self.powers

    def exponent(self, weights: Mapping[str, Fraction]) -> Fraction:
        """Σ_v powers[v]·weights[v]: how the monomial scales when each v grows like n^weights[v]."""
        return sum((p * weights.get(n, Fraction(0)) for n, p in self.powers.items()), Fraction(0))

    def evaluate(self, sizes: Mapping[str, float]) -> float:
        value = self.coef
        for name, p in self.powers.items():
            value *= _power(float(sizes[name]), p)
        return value

    def __str__(self) -> str:
        parts = [] if self.coef == 1.0 and self.powers else [f"{self.coef:g}"]
        for name, p in sorted(self.powers.items()):
            parts.append(name if p == 1 else f"{name}^({p})")
        return " * ".join(parts)


def _power(base: float, p: Fraction) -> float:
    if p.denominator == 1:
        return float(base) ** int(p)
    return math.copysign(abs(base) ** float(p), base) if p.denominator % 2 else float(base) ** float(p)


Lookup = Callable[[str, Expr], Monomial]
"""Resolves a variable name (with the node, for error positions) to its monomial."""


def to_monomial(expr: Expr, lookup: Lookup, source: str | None = None) -> Monomial:
    """Fold an expression to a monomial; hyperparameters in exponents are resolved through ``lookup`` too."""
    kind = expr.kind
    if kind == "num":
        try:
            return Monomial.const(float(expr.value))
        except OverflowError:
            raise SpecError("number too large for a float", expr.pos, source=source) from None
    if kind == "var":
        return lookup(expr.name, expr)
    if kind == "neg":
        inner = to_monomial(expr.args[0], lookup, source)
        return Monomial(-inner.coef, inner.powers)
    if kind == "mul":
        left, right = to_monomial(expr.args[0], lookup, source), to_monomial(expr.args[1], lookup, source)
        try:
            return left * right
        except OverflowError:
            raise SpecError("value out of range", expr.pos, source=source) from None
    if kind == "div":
        divisor = to_monomial(expr.args[1], lookup, source)
        if divisor.coef == 0:
            raise SpecError("division by zero", expr.args[1].pos, source=source,
                            hint="a divisor must be non-zero; check the literal or the hyperparameter's value")
        try:
            return to_monomial(expr.args[0], lookup, source) / divisor
        except (OverflowError, ZeroDivisionError):
            raise SpecError("value out of range", expr.pos, source=source) from None
    if kind == "pow":
        base = to_monomial(expr.args[0], lookup, source)
        p = exponent_value(expr.args[1], lookup, source)
        if base.coef == 0 and p < 0:
            raise SpecError("zero raised to a negative power (division by zero)", expr.pos, source=source)
        if base.coef < 0 and p.denominator % 2 == 0:
            raise SpecError(f"negative number raised to the power {p}", expr.pos, source=source,
                            hint="fractional powers need a positive base")
        try:
            return base.pow(p)
        except (OverflowError, ZeroDivisionError):
            raise SpecError(f"power out of range: {expr.text}", expr.pos, source=source) from None
    raise SpecError(f"'{kind}' is allowed only inside an exponent", expr.pos, source=source,
                    hint="expressions are products, quotients and powers; put sums inside ^( … )")


def exponent_value(expr: Expr, lookup: Lookup, source: str | None = None) -> Fraction:
    """An exponent: a rational constant built from literals and hyperparameters with + - * /."""
    kind = expr.kind
    if kind == "num":
        return expr.value
    if kind == "var":
        m = lookup(expr.name, expr)
        if not m.is_const:
            raise SpecError(f"exponent '{expr.name}' depends on the model's size", expr.pos, source=source,
                            hint="exponents must be constants: literals or hyperparameters")
        if not math.isfinite(m.coef):
            raise SpecError(f"exponent '{expr.name}' is not finite", expr.pos, source=source)
        return Fraction(m.coef).limit_denominator(10**9)
    if kind == "neg":
        return -exponent_value(expr.args[0], lookup, source)
    left = exponent_value(expr.args[0], lookup, source)
    if kind == "pow":
        right = exponent_value(expr.args[1], lookup, source)
        if right.denominator != 1:
            raise SpecError("an exponent inside an exponent must be an integer", expr.pos, source=source)
        if abs(right) > 64 or abs(left.numerator) > 10**12 or left.denominator > 10**12:
            raise SpecError("exponent out of range", expr.pos, source=source, hint="exponents are small rationals")
        if left == 0 and right < 0:
            raise SpecError("zero raised to a negative power (division by zero)", expr.pos, source=source)
        return left ** int(right)
    right = exponent_value(expr.args[1], lookup, source)
    if kind == "add":
        return left + right
    if kind == "sub":
        return left - right
    if kind == "mul":
        return left * right
    if kind == "div":
        if right == 0:
            raise SpecError("division by zero", expr.args[1].pos, source=source)
        return left / right
    raise AssertionError(kind)  # the grammar has no other node kinds
