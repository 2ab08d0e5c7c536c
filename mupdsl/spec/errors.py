"""The one error class of mupdsl's spec layer, and how it is shown to a person.

Every problem in a ``.param`` file becomes a :class:`SpecError` that knows its file, line and column; its
``str()`` is ``path:line:col: message`` followed by the source line, a caret under the culprit and a hint
("expected …", "did you mean …"). Modelled on miniwdl's error reporting.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True, slots=True)
class SourcePos:
    """A place in a source file: 1-based line and column, with an optional end on the same line."""

    path: str
    line: int
    col: int
    end_col: int | None = None

    def __str__(self) -> str:
        if self.line < 1:  # a whole file (missing, unreadable) or a command-line value
            return self.path
        return f"{self.path}:{self.line}:{self.col}"


class SpecError(Exception):
    """A problem in a spec (syntax or meaning), located in its source.

    ``notes`` are extra located lines ("first declared here"); ``hint`` is the last line of advice.
    """

    def __init__(
        self,
        message: str,
        pos: SourcePos,
        *,
        hint: str | None = None,
        source: str | None = None,
        notes: Iterable[tuple[str, SourcePos]] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos
        self.hint = hint
        self.source = source
        self.notes = tuple(notes)

    def __str__(self) -> str:
        return self.render()

    def render(self) -> str:
        lines = [f"{_printable(str(self.pos))}: error: {_printable(self.message)}"]
        lines += _excerpt(self.source, self.pos)
        for text, pos in self.notes:
            lines.append(f"{_printable(str(pos))}: note: {_printable(text)}")
        if self.hint:
            lines.append(f"  hint: {_printable(self.hint)}")
        return "\n".join(lines)


def _printable(text: str) -> str:
    """Text as it can be printed on one line: every character that is not printable (a line break other than the
    file's own, a control character) shown as a space."""
    return text if text.isprintable() else "".join(ch if ch.isprintable() else " " for ch in text)


def source_line(source: str, line: int) -> str | None:
    """Line ``line`` (1-based) of ``source``, lines ending at ``\n`` only — as the parser counts them; the loader
    has already turned ``\r\n`` and a lone ``\r`` into ``\n``. None when there is no such line."""
    if line < 1:
        return None
    start = 0
    for _ in range(line - 1):
        start = source.find("\n", start) + 1
        if start == 0:
            return None
    end = source.find("\n", start)
    return source[start:] if end < 0 else source[start:end]


def _excerpt(source: str | None, pos: SourcePos) -> list[str]:
    if source is None:
        return []
    text = source_line(source, pos.line)
    if text is None:
        return []
    text = _printable(text)   # one column per character: a tab, a form feed, U+2028 as a space
    width = max(1, (pos.end_col or pos.col + 1) - pos.col)
    column = pos.col - 1
    if len(text) > EXCERPT_CHARS:   # a long line: the part around the caret, "…" where it is cut
        start = max(0, min(column - EXCERPT_CHARS // 3, len(text) - EXCERPT_CHARS))
        end = start + EXCERPT_CHARS
        shown = ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")
        column = column - start + (1 if start else 0)
        width = max(1, min(width, EXCERPT_CHARS - (pos.col - 1 - start)))
        text = shown
    gutter = f"{pos.line:>5} | "
    return [gutter + text, " " * (len(gutter) - 2) + "| " + " " * column + "^" * width]


EXCERPT_CHARS = 160
"""A source line longer than this is shown around the caret only."""


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A 'did you mean …?' hint for the closest candidate, or None when nothing is close."""
    close = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
