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
