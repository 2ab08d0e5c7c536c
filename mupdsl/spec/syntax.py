"""The grammar ``grammars/param.lark``, read by Lark, and syntax errors with positions.

Lark's LALR parser with propagated positions (:func:`parser`) is the reference reader of the grammar: every
syntax error message comes from it. :mod:`mupdsl.spec.parsing` reads the same grammar faster and falls back to
this one. The expression errors both readers raise (too deep, too long, a bad number, an ambiguous exponent) are
built here so that they read the same.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

from lark import Lark, Tree, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr

from .errors import SourcePos, SpecError
from .limits import MAX_EXPR_TOKENS, MAX_NESTING
from .model import Expr

KEYWORDS = ("spec", "extends", "hyper", "set")

_TERMINAL_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": 'a quoted name glob ("…")',
    "$END": "the end of the file",
}


@functools.lru_cache(maxsize=1)
def parser() -> Lark:
    """Lark's LALR parser for the grammar, with positions on every node (built once)."""
    grammar = resources.files("mupdsl").joinpath("grammars/param.lark").read_text(encoding="utf-8")
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def lark_parse(text: str, path: str) -> Tree:
    """Parse with Lark (the reference parser), or raise a located SpecError."""
    try:
        return parser().parse(text)
    except UnexpectedInput as exc:
        raise syntax_error(exc, text, path) from None


def too_deep(pos: SourcePos, source: str | None) -> SpecError:
    return SpecError(f"expression nested too deeply: more than {MAX_NESTING} levels of parentheses and unary minus",
                     pos, source=source, hint="write it flat: a * b * c needs no parentheses")


def number_error(exc: ValueError, pos: SourcePos, source: str | None) -> SpecError:
    return SpecError(str(exc), pos, source=source,
                     hint="numbers are 0 or between 1e-300 and 1e301 in magnitude, written in at most 100 characters")


def division_problem(left: Expr, right: Expr, source: str | None) -> SpecError | None:
    """``fan_in^-1/2`` reads as ``(fan_in^-1)/2``: refused as ambiguous when the divisor is a number and the power
    before it has a bare exponent."""
    if right.kind != "num":
        return None
    power = left
    while power.kind in ("mul", "div"):
        power = power.args[1]
    exponent = power.args[1] if power.kind == "pow" else None
    if exponent is None or exponent.text.startswith("("):
        return None
    return SpecError(f"ambiguous exponent in '{power.text}/{right.text}'", power.pos, source=source,
                     hint=f"'^' binds tighter than '/': write {power.args[0].text}^({exponent.text}/"
                          f"{right.text}) for a fractional power, or ({power.text})/{right.text}")


class Broken:
    """An expression the fast parser read but the reader must refuse (a number out of range, an ambiguous
    exponent): its first error, raised when the reader reaches it — when it would have reached the subtree."""

    __slots__ = ("error", "pos", "text")

    def __init__(self, error: SpecError, pos: SourcePos, text: str) -> None:
        self.error, self.pos, self.text = error, pos, text


def too_long(pos: SourcePos, source: str | None) -> SpecError:
    return SpecError(f"expression too long: more than {MAX_EXPR_TOKENS} numbers, names, operators and parentheses",
                     pos, source=source, hint="split it: declare parts of it as hyperparameters")


# ---------------------------------------------------------------------------------------------------------
# Syntax errors


def _describe(terminal: str) -> str:
    if terminal in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[terminal]
    try:
        pattern = parser().get_terminal(terminal).pattern
    except KeyError:
        return terminal
    return f"'{pattern.value}'" if isinstance(pattern, PatternStr) else terminal.lower()


def _expected(names) -> str:
    words = sorted({_describe(n) for n in names if not n.startswith("__")})
    if not words:
        return ""
    if len(words) > 8:
        words = words[:8] + ["…"]
    return "expected " + (words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1])


def _end_pos(text: str, path: str) -> SourcePos:
    lines = text.split("\n")
    return SourcePos(path, len(lines), len(lines[-1]) + 1)


_GLUED_NUMBER = re.compile(
    r"(?<![A-Za-z0-9_.])(?>(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)[A-Za-z_][A-Za-z0-9_]*")
"""A number with a name glued to it (``0x10``, ``1_000``, ``2e``, ``.5e``): never valid, and a parser reports it
later, where the name it read as a second token stops the statement — or reads it as the start of the next one.
The number is matched atomically, so ``1e-3`` is a number and not ``1`` glued to ``e``."""


def glued_number(text: str, line: int | None = None) -> tuple[int, int, str] | None:
    """The first number with a name glued to it on lines 1…``line`` (all lines: None), outside comments and globs:
    (line, column, the text), or None."""
    if not _GLUED_NUMBER.search(text):     # one scan of the file; lines, comments and globs only for a candidate
        return None
    for number, source_line in enumerate(text.split("\n")[:line], start=1):
        code = re.sub(r'"[^"\n]*"', lambda m: " " * len(m.group()), source_line).split("#", 1)[0]
        found = _GLUED_NUMBER.search(code)
        if found:
            return number, found.start() + 1, found.group()
    return None


def glued_number_error(text: str, path: str, line: int | None = None) -> SpecError | None:
    """The error for the first number with a name glued to it (:func:`glued_number`), or None."""
    glued = glued_number(text, line)
    if glued is None:
        return None
    at, column, shown = glued
    return SpecError(f"'{shown}' is not a number", SourcePos(path, at, column, column + len(shown)), source=text,
                     hint="write numbers in decimal, with no letter or '_' after them (16, 1000, 1e-3); put a space "
                          "or an operator between a number and a name")


def syntax_error(exc: UnexpectedInput, text: str, path: str) -> SpecError:
    line = getattr(exc, "line", None)
    col = getattr(exc, "column", None)
    if not isinstance(line, int) or line < 1:
        end = _end_pos(text, path)
        line, col = end.line, end.col
    glued = glued_number_error(text, path, line)
    if glued is not None:
        return glued
    if isinstance(exc, UnexpectedCharacters):
        char = text[exc.pos_in_stream] if exc.pos_in_stream < len(text) else ""
        what = _char_name(char)
        hint = _expected(exc.allowed or ())
        if char == '"':
            hint = 'a name glob is one line between double quotes: "blocks.*.attn.q.weight"'
        pos = SourcePos(path, line, col, col + 1)
        return SpecError(f"unexpected character {what}", pos, source=text, hint=hint or None)
    if isinstance(exc, UnexpectedToken):
        token = exc.token
        if token.type == "$END":
            return SpecError("unexpected end of file", _end_pos(text, path), source=text,
                             hint=_expected(exc.expected) or "a '}' may be missing")
        shown = str(token)
        pos = SourcePos(path, line, col, col + max(1, len(shown)))
        hint = _expected(exc.accepts or exc.expected)
        if shown in KEYWORDS:
            hint = f"'{shown}' is a keyword; it starts a top-level statement. " + hint
        return SpecError(f"unexpected {_token_name(token.type, shown)}", pos, source=text, hint=hint or None)
    if isinstance(exc, UnexpectedEOF):
        pos = SourcePos(path, line, col)
        return SpecError("unexpected end of file", pos, source=text, hint=_expected(exc.expected) or None)
    return SpecError(str(exc).splitlines()[0], SourcePos(path, line, col), source=text)


def _char_name(char: str) -> str:
    if not char:
        return "(end of file)"
    if char.isprintable() and not char.isspace():
        return f"'{char}'"
    return f"U+{ord(char):04X}"


def _token_name(kind: str, text: str) -> str:
    if kind == "NAME":
        return f"name '{text}'"
    if kind == "NUMBER":
        return f"number {text}"
    if kind == "STRING":
        return f"glob {text}"
    return f"'{text}'"
