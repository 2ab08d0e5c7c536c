"""Expressions as monomials: ``coef · Π var^p`` with exact rational exponents.

Every ``.param`` expression is a product of powers (design.md §2), so it is one :class:`Monomial` once the
hyperparameters are known. From a monomial come its value at given sizes and its width/depth exponent
(the a, b, c of an abc-parametrization, TP4 §2).

Folding is iterative (an explicit stack, no recursion), so a flat product of thousands of factors is as fine as a
short one; every exponent stays within :data:`~mupdsl.spec.limits.MAX_EXPONENT`, and every failure — division by
zero, a value out of float range, a fractional power of a negative number — is a :class:`SpecError` at the
culprit's position. At compile time :meth:`Monomial.evaluate` reports a value that leaves float range at the given
sizes as an :class:`EvaluationError` naming the rule's position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Mapping

from .errors import SourcePos, SpecError
from .limits import MAX_EXPONENT, MAX_EXPONENT_TERM, check_exponent, exponent_from_float
from .model import Expr

_LOG_MAX = math.log(1.7976931348623157e308)
_LOG_MIN = math.log(2.2250738585072014e-308)   # below: subnormal, then 0


class EvaluationError(SpecError, OverflowError):
    """A rule's value cannot be computed at the given sizes (it leaves float range, or divides by a zero size).

    A :class:`SpecError` located at the rule's expression, and an :class:`OverflowError` so that callers that
    catch arithmetic failures of :meth:`Monomial.evaluate` keep working.
    """


@dataclass(frozen=True)
class Monomial:
    """``coef · Π_v v^powers[v]`` over size variables; hyperparameters are folded into ``coef``.

    ``pos`` is where the monomial was written (the expression it was folded from), for errors at evaluation.
    """

    coef: float = 1.0
    powers: Mapping[str, Fraction] = field(default_factory=dict)
    pos: SourcePos | None = field(default=None, compare=False, repr=False)

    @staticmethod
    def const(value: float) -> "Monomial":
        return Monomial(float(value), {})

    @staticmethod
    def var(name: str) -> "Monomial":
        return Monomial(1.0, {name: Fraction(1)})

    def __mul__(self, other: "Monomial") -> "Monomial":
        coef = self.coef * other.coef
        if not math.isfinite(coef) or (coef == 0 and self.coef != 0 and other.coef != 0):
            raise OverflowError("coefficient out of float range")
        powers = dict(self.powers)
        for name, p in other.powers.items():
            powers[name] = powers.get(name, Fraction(0)) + p
        return Monomial(coef, {n: p for n, p in powers.items() if p != 0})

    def __truediv__(self, other: "Monomial") -> "Monomial":
        if other.coef == 0:
            raise ZeroDivisionError("division by zero")
        return self * other.pow(Fraction(-1))

    def pow(self, p: Fraction) -> "Monomial":
        """Raise to an exact rational power; a negative coefficient only to an integer power (ValueError)."""
        return Monomial(_power(self.coef, p), {n: q * p for n, q in self.powers.items() if q * p != 0})

    @property
    def is_const(self) -> bool:
        return not self.powers

    def exponent(self, weights: Mapping[str, Fraction]) -> Fraction:
        """Σ_v powers[v]·weights[v]: how the monomial scales when each v grows like n^weights[v]."""
        return sum((p * weights.get(n, Fraction(0)) for n, p in self.powers.items()), Fraction(0))

    def evaluate(self, sizes: Mapping[str, float]) -> float:
        """The value at ``sizes``; raises :class:`EvaluationError` (located at the rule) when it is not a finite
        float there: ``width^64`` at width 2^17, or a zero size under a negative power."""
        value = self.coef
        try:
            for name, p in self.powers.items():
                value *= _power(float(sizes[name]), p)
        except (OverflowError, ZeroDivisionError, ValueError):
            return self._careful(sizes)
        if math.isfinite(value) and (value != 0 or self.coef == 0):
            return value
        return self._careful(sizes)

    def _careful(self, sizes: Mapping[str, float]) -> float:
        """The value when the plain product failed or left float range: in logarithms (``width^64 / fan_in^64``
        overflows on the way but not at the end), or an :class:`EvaluationError` saying why not."""
        if self.coef == 0:
            return 0.0
        log, shown, zero = math.log(abs(self.coef)), [], False
        for name, p in sorted(self.powers.items()):
            size = float(sizes[name])
            shown.append(f"{name} = {size:g}")
            if not math.isfinite(size) or size < 0:
                raise self._error(f"{name} = {size:g} has no power {p}")
            if size == 0:
                if p < 0:
                    raise self._error(f"{name} is 0 and its power {p} is negative (division by zero)")
                zero = True
                continue
            log += float(p) * math.log(size)
        if zero:
            return 0.0
        where = ", ".join(shown)
        if log > _LOG_MAX:
            raise self._error(f"at {where} it is about 1e{log / math.log(10):.0f}, beyond the largest float "
                              "(1.8e308)")
        if log < _LOG_MIN:
            raise self._error(f"at {where} it is about 1e{log / math.log(10):.0f}, below float range "
                              "(2.2e-308), so it would be 0")
        return math.copysign(math.exp(log), self.coef)

    def _error(self, why: str) -> EvaluationError:
        pos = self.pos or SourcePos("(a computed value)", 0, 0)
        return EvaluationError(f"{self} cannot be evaluated at these sizes: {why}", pos,
                               hint="an exponent this large only fits small sizes; check the rule")

    def __str__(self) -> str:
        parts = [] if self.coef == 1.0 and self.powers else [f"{self.coef:g}"]
        for name, p in sorted(self.powers.items()):
            parts.append(name if p == 1 else f"{name}^({p})")
        return " * ".join(parts)


def _power(base: float, p: Fraction) -> float:
    """``base^p`` for a rational ``p``. A negative base has a real power only for an integer ``p``: the language
    refuses ``(-8)^(2/3)`` rather than pick a branch (docs/language.md, "Limits")."""
    if p.denominator == 1:
        value = float(base) ** int(p)
    elif base < 0:
        raise ValueError(f"negative number raised to the power {p}")
    else:
        value = float(base) ** float(p)
    if value == 0 and base != 0:
        raise OverflowError("underflow")   # 1e-300^2 is not 0
    return value


Lookup = Callable[[str, Expr], Monomial]
"""Resolves a variable name (with the node, for error positions) to its monomial."""


def _postorder(root: Expr, children: Callable[[Expr], tuple[Expr, ...]], combine: Callable[[Expr, list], object]):
    """Fold ``root`` bottom-up without recursion: ``combine(node, folded children)`` for every node (a leaf —
    no children — is combined at once)."""
    stack: list[tuple[Expr, bool]] = [(root, False)]
    out: list = []
    while stack:
        node, ready = stack.pop()
        kids = children(node)
        if not kids:
            out.append(combine(node, []))
        elif ready:
            n = len(kids)
            args = out[len(out) - n:]
            del out[len(out) - n:]
            out.append(combine(node, args))
        else:
            stack.append((node, True))
            stack.extend((kid, False) for kid in reversed(kids))
    return out[0]


def _power_ok(p: Fraction) -> bool:
    """Whether ``p`` is within the exponent limits (integer arithmetic: this runs for every product folded)."""
    n, d = p.numerator, p.denominator
    return d <= MAX_EXPONENT_TERM and abs(n) <= MAX_EXPONENT_TERM and abs(n) <= MAX_EXPONENT * d


def _check_powers(m: Monomial, expr: Expr, source: str | None) -> Monomial:
    for name, p in m.powers.items():
        if not _power_ok(p):
            raise SpecError(f"'{name}' ends up raised to the power {p}", expr.pos, source=source,
                            hint=f"exponents are at most {MAX_EXPONENT} in magnitude (p/q with p and q at most "
                                 "10^12), also after folding")
    return m


def to_monomial(expr: Expr, lookup: Lookup, source: str | None = None) -> Monomial:
    """Fold an expression to a monomial; hyperparameters in exponents are resolved through ``lookup`` too.

    Bottom-up with an explicit stack (no recursion). The result carries ``expr``'s position
    (:attr:`Monomial.pos`) for errors at evaluation time.
    """
    out: list[Monomial] = []
    stack: list[tuple[Expr, bool]] = [(expr, False)]
    while stack:
        node, ready = stack.pop()
        kind = node.kind
        if kind == "num":
            value = float(node.value)
            if not math.isfinite(value):
                raise SpecError("number too large for a float", node.pos, source=source)
            out.append(Monomial(value, {}))
        elif kind == "var":
            out.append(lookup(node.name, node))
        elif not ready:
            if kind not in ("neg", "mul", "div", "pow"):
                raise SpecError(f"'{kind}' is allowed only inside an exponent", node.pos, source=source,
                                hint="expressions are products, quotients and powers; put sums inside ^( … )")
            stack.append((node, True))
            if kind in ("mul", "div"):
                stack.append((node.args[1], False))
            stack.append((node.args[0], False))   # the exponent of a power is folded by exponent_value
        elif kind == "neg":
            inner = out.pop()
            out.append(Monomial(-inner.coef, inner.powers))
        elif kind == "pow":
            out.append(_fold_power(node, out.pop(), lookup, source))
        else:
            right = out.pop()
            left = out.pop()
            if kind == "div" and right.coef == 0:
                raise SpecError("division by zero", node.args[1].pos, source=source,
                                hint="a divisor must be non-zero; check the literal or the hyperparameter's value")
            try:
                folded = left * right if kind == "mul" else left / right
            except (OverflowError, ZeroDivisionError):
                raise SpecError("value out of float range (1e-308 … 1.8e308)", node.pos, source=source) from None
            out.append(_check_powers(folded, node, source) if folded.powers else folded)
    result = out[0]
    return Monomial(result.coef, result.powers, expr.pos)


def _fold_power(node: Expr, base: Monomial, lookup: Lookup, source: str | None) -> Monomial:
    p = exponent_value(node.args[1], lookup, source)
    if base.coef == 0 and p < 0:
        raise SpecError("zero raised to a negative power (division by zero)", node.pos, source=source)
    if base.coef < 0 and p.denominator != 1:
        raise SpecError(f"negative number raised to the power {p}", node.pos, source=source,
                        hint="a fractional power needs a positive base: (-8)^(1/3) has no value here; "
                             "write -(8^(1/3))")
    why = check_exponent(p)
    if why is not None:
        raise SpecError(why, node.args[1].pos, source=source)
    try:
        return _check_powers(base.pow(p), node, source)
    except (OverflowError, ZeroDivisionError):
        raise SpecError(f"power out of float range (1e-308 … 1.8e308): {node.text}", node.pos,
                        source=source) from None


def exponent_value(expr: Expr, lookup: Lookup, source: str | None = None) -> Fraction:
    """An exponent: a rational constant built from literals and hyperparameters with + - * /; every intermediate
    value stays within the exponent limits (docs/language.md, "Limits")."""

    kind = expr.kind      # the usual exponents, at once: 2, -1, (1/2), (-1/2)
    if kind == "num" and expr.value.denominator <= MAX_EXPONENT_TERM and abs(expr.value.numerator) <= MAX_EXPONENT_TERM:
        return expr.value
    if kind in ("neg", "div") and all(a.kind == "num" for a in expr.args) and all(
            a.value.denominator == 1 and abs(a.value.numerator) <= MAX_EXPONENT_TERM for a in expr.args):
        if kind == "neg":
            return -expr.args[0].value
        if expr.args[1].value != 0:
            return expr.args[0].value / expr.args[1].value

    def children(node: Expr) -> tuple[Expr, ...]:
        return node.args if node.kind not in ("num", "var") else ()

    def combine(node: Expr, args: list[Fraction]) -> Fraction:
        kind = node.kind
        if kind == "num":
            value = node.value
        elif kind == "var":
            m = lookup(node.name, node)
            if not m.is_const:
                raise SpecError(f"exponent '{node.name}' depends on the model's size", node.pos, source=source,
                                hint="exponents must be constants: literals or hyperparameters")
            if not math.isfinite(m.coef):
                raise SpecError(f"exponent '{node.name}' is not finite", node.pos, source=source)
            if abs(m.coef) > MAX_EXPONENT_TERM:
                raise SpecError(f"exponent '{node.name}' = {m.coef:g} is out of range", node.pos, source=source,
                                hint=f"exponents are at most {MAX_EXPONENT} in magnitude")
            try:
                value = exponent_from_float(m.coef)
            except ValueError as exc:
                raise SpecError(f"'{node.name}' used as an exponent: {exc}", node.pos, source=source,
                                hint="give the hyperparameter an exact value such as 1/2 or 0.25") from None
        elif kind == "neg":
            value = -args[0]
        elif kind == "pow":
            left, right = args
            if right.denominator != 1:
                raise SpecError("an exponent inside an exponent must be an integer", node.pos, source=source)
            if abs(right) > MAX_EXPONENT:
                raise SpecError("exponent out of range", node.pos, source=source,
                                hint=f"exponents are at most {MAX_EXPONENT} in magnitude")
            if left == 0 and right < 0:
                raise SpecError("zero raised to a negative power (division by zero)", node.pos, source=source)
            value = left ** int(right)
        elif kind == "add":
            value = args[0] + args[1]
        elif kind == "sub":
            value = args[0] - args[1]
        elif kind == "mul":
            value = args[0] * args[1]
        elif kind == "div":
            if args[1] == 0:
                raise SpecError("division by zero", node.args[1].pos, source=source)
            value = args[0] / args[1]
        else:
            raise AssertionError(kind)  # the grammar has no other node kinds
        if abs(value.numerator) > MAX_EXPONENT_TERM or value.denominator > MAX_EXPONENT_TERM:
            raise SpecError("exponent out of range", node.pos, source=source,
                            hint=f"exponents are small rationals: p/q with p and q at most 10^12, at most "
                                 f"{MAX_EXPONENT} in magnitude")
        return value

    return _postorder(expr, children, combine)
