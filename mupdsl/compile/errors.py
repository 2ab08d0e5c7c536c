"""The compiler's error: a model that cannot be loaded, traced or fully decided by the spec."""

from __future__ import annotations


class CompileError(Exception):
    """A problem with the model or its fit to the spec; ``str()`` is the message and a hint for the user."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        return f"error: {self.message}" + (f"\n  hint: {self.hint}" if self.hint else "")

    def __str__(self) -> str:
        return self.render()


def listed(items: list[str], most: int, sep: str = ", ") -> str:
    """The first ``most`` of ``items`` joined by ``sep``, and how many more there are: for messages that name
    what went wrong without printing a thousand names."""
    return sep.join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")
