"""Reading ``.param`` text: the Lark parser for ``grammars/param.lark`` and syntax errors with positions.

The parser is LALR with propagated positions, so every node of the tree knows its line, column and the
exact source text it covers; any Lark failure becomes a :class:`~mupdsl.spec.errors.SpecError`.
"""

from __future__ import annotations

import functools
from importlib import resources

from lark import Lark, Tree, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr

from .errors import SourcePos, SpecError

_KEYWORDS = ("spec", "extends", "hyper", "set")

_TERMINAL_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": 'a quoted name glob ("…")',
    "$END": "the end of the file",
}


@functools.lru_cache(maxsize=1)
def parser() -> Lark:
    grammar = resources.files("mupdsl").joinpath("grammars/param.lark").read_text(encoding="utf-8")
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def parse(text: str, path: str) -> Tree:
    """Parse ``text`` (the content of ``path``) to a Lark tree, or raise a located SpecError."""
    try:
        return parser().parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text, path) from None


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


def _syntax_error(exc: UnexpectedInput, text: str, path: str) -> SpecError:
    line = getattr(exc, "line", None)
    col = getattr(exc, "column", None)
    if not isinstance(line, int) or line < 1:
        lines = text.splitlines() or [""]
        line, col = len(lines), len(lines[-1]) + 1
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
            lines = text.splitlines() or [""]
            pos = SourcePos(path, len(lines), len(lines[-1]) + 1)
            return SpecError("unexpected end of file", pos, source=text,
                             hint=_expected(exc.expected) or "a '}' may be missing")
        shown = str(token)
        pos = SourcePos(path, line, col, col + max(1, len(shown)))
        hint = _expected(exc.accepts or exc.expected)
        if shown in _KEYWORDS:
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
