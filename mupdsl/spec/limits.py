"""The limits of the ``.param`` language (docs/language.md, "Limits"), and the checks that enforce them where the
input is read.

Every limit is a plain constant here so that the documentation, the checks and the tests agree; each check
raises :class:`ValueError` with a message that says what is allowed, and its caller turns it into a located
:class:`~mupdsl.spec.errors.SpecError`.
"""

from __future__ import annotations

import functools
import re
from fractions import Fraction

MAX_FILE_BYTES = 2 * 1024 * 1024
"""A spec file is at most 2 MiB (a real one is a few kB; a 1 MB file is checked in well under 2 s)."""

MAX_NUMBER_CHARS = 100
"""A numeric literal is at most 100 characters long."""

MAX_NUMBER_DECADE = 300
"""A number is 0 or between 1e-300 and 1e301 in magnitude (inside float64's range, with room for products)."""

MAX_EXPONENT = 64
"""Every exponent, as written and after folding (``width^40 * width^40`` is ``width^80``), is at most 64 in
magnitude."""

MAX_EXPONENT_TERM = 10**12
"""Exponents are exact rationals p/q; p and q stay at most 10^12 in magnitude, while they are computed too."""

MAX_EXPR_TOKENS = 10_000
"""An expression has at most 10,000 numbers, names, operators and parentheses (a flat product of 5,000 factors is
fine)."""

MAX_NESTING = 100
"""Parentheses and unary minus signs nest at most 100 deep."""

MAX_RULES = 20_000
"""A spec (with everything it extends) has at most 20,000 rules: a real one has tens; each rule is matched against
every tensor name, and 20,000 compile in a few seconds."""

MAX_GLOB_CHARS = 256
"""A name glob is at most 256 characters long."""

FLOAT32_MAX = 3.4028234663852886e38
"""The largest float32: a constant init std or ``const`` value must fit in a float32 weight."""

_NUMBER = re.compile(r"([0-9]+)?(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]+))?")   # ASCII digits only: int() reads others


@functools.lru_cache(maxsize=4096)   # a large spec repeats the same few literals
def parse_number(text: str) -> Fraction:
    """The exact value of a numeric literal (``12``, ``0.5``, ``.5``, ``1e-3``, ``2.5E+4``) within the limits.

    Raises ValueError (message: what is allowed) for a literal over :data:`MAX_NUMBER_CHARS` characters or
    outside 1e-300 … 1e301 in magnitude. Never builds a huge integer: ``1e100000000`` is refused at once.
    """
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"number too long ({len(text)} characters); a number has at most {MAX_NUMBER_CHARS}")
    match = _NUMBER.fullmatch(text)
    if match is None or not (match.group(1) or match.group(2)):
        raise ValueError(f"'{text}' is not a number")
    whole, frac, exp = match.group(1) or "", match.group(2) or "", match.group(3)
    digits = (whole + frac).lstrip("0")
    if not digits:
        return Fraction(0)
    exponent = int(exp) if exp else 0            # at most 99 digits: cheap
    decade = len(whole.lstrip("0")) - 1 + exponent if whole.lstrip("0") else \
        exponent - (len(frac) - len(frac.lstrip("0"))) - 1
    if decade > MAX_NUMBER_DECADE or decade < -MAX_NUMBER_DECADE:
        raise ValueError(f"number out of range: {text} is about 1e{decade}; numbers are 0 or between "
                         f"1e-{MAX_NUMBER_DECADE} and 1e{MAX_NUMBER_DECADE + 1} in magnitude")
    shift = exponent - len(frac)                 # value = int(whole + frac) · 10^shift, |shift| < 500 here
    mantissa = int(whole + frac)
    return Fraction(mantissa * 10**shift) if shift >= 0 else Fraction(mantissa, 10**-shift)


def parse_value(text: str) -> Fraction:
    """A command-line or API value: ``[+-]NUMBER`` or ``[+-]NUMBER/NUMBER`` (``0.1``, ``-1e-3``, ``1/2``)."""
    body = text.strip()
    sign = body[:1] if body[:1] in ("+", "-") else ""
    num, slash, den = body[len(sign):].partition("/")
    if "/" in den:
        raise ValueError(f"'{text}' is not a number: one '/' at most (a fraction such as 1/3)")
    try:
        value = parse_number(num.strip())
        divisor = parse_number(den.strip()) if slash else Fraction(1)
    except ValueError as exc:
        if not str(exc).endswith("is not a number"):
            raise           # out of range, too long: the part's own message
        raise ValueError(f"'{text}' is not a number") from None   # the whole value, not the part that failed
    if slash:
        if divisor == 0:
            raise ValueError(f"'{text}' divides by zero")
        value /= divisor
        check_magnitude(value, text)
    return -value if sign == "-" else value


def check_magnitude(value: Fraction, text: str) -> None:
    """Refuse a value outside 1e-300 … 1e301 in magnitude (0 is fine)."""
    if value == 0:
        return
    size = abs(value)
    if size > Fraction(10) ** (MAX_NUMBER_DECADE + 1) or size < Fraction(1, 10**MAX_NUMBER_DECADE):
        raise ValueError(f"number out of range: {text}; numbers are 0 or between 1e-{MAX_NUMBER_DECADE} and "
                         f"1e{MAX_NUMBER_DECADE + 1} in magnitude")


def check_exponent(p: Fraction) -> str | None:
    """Why exponent ``p`` is out of range, or None when it is fine."""
    if abs(p.numerator) > MAX_EXPONENT_TERM or p.denominator > MAX_EXPONENT_TERM:
        return (f"exponent {p} is too precise: exponents are fractions p/q with p and q at most "
                f"10^{len(str(MAX_EXPONENT_TERM)) - 1}")
    if abs(p) > MAX_EXPONENT:
        return f"exponent {p} out of range: exponents are at most {MAX_EXPONENT} in magnitude"
    return None


def exponent_from_float(value: float) -> Fraction:
    """An exponent that reached a float (a hyperparameter's value, alpha): the simple fraction p/q (q ≤ 10^6) it
    is within 1e-12 of, relative. Raises ValueError otherwise — ``1e-300`` is not rounded to 0, nor ``0.1234567891``
    to a nearby fraction."""
    exact = Fraction(value)
    if exact == 0:
        return exact
    near = exact.limit_denominator(10**6)
    if near == 0 or abs(near - exact) > abs(exact) * Fraction(1, 10**12):
        raise ValueError(f"exponent {value:g} is not a simple fraction p/q (q at most 10^6)")
    return near


__all__ = [
    "FLOAT32_MAX", "MAX_EXPONENT", "MAX_EXPONENT_TERM", "MAX_EXPR_TOKENS", "MAX_FILE_BYTES", "MAX_GLOB_CHARS",
    "MAX_NESTING", "MAX_NUMBER_CHARS", "MAX_NUMBER_DECADE", "MAX_RULES", "check_exponent", "check_magnitude",
    "exponent_from_float", "parse_number", "parse_value",
]
