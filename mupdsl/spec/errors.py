"""The one error class of mupdsl's spec layer, and how it is shown to a person.

Every problem in a ``.param`` file becomes a :class:`SpecError` that knows its file, line and column; its
``str()`` is ``path:line:col: message`` followed by the source line, a caret under the culprit and a hint
("expected …", "did you mean …"). Modelled on miniwdl's error reporting.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
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
        lines = [f"{self.pos}: error: {self.message}"]
        lines += _excerpt(self.source, self.pos)
        for text, pos in self.notes:
            lines.append(f"{pos}: note: {text}")
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


def _excerpt(source: str | None, pos: SourcePos) -> list[str]:
    if source is None:
        return []
    all_lines = source.splitlines()
    if not 1 <= pos.line <= len(all_lines):
        return []
    text = all_lines[pos.line - 1].replace("\t", " ")
    width = max(1, (pos.end_col or pos.col + 1) - pos.col)
    gutter = f"{pos.line:>5} | "
    return [gutter + text, " " * (len(gutter) - 2) + "| " + " " * (pos.col - 1) + "^" * width]


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A 'did you mean …?' hint for the closest candidate, or None when nothing is close."""
    close = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
