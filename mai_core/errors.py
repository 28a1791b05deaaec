"""User-facing errors: a clear message (what, where, how to fix) instead of a traceback."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One problem found in user input."""

    where: str  # file (and row/column) the problem is in
    what: str  # what is wrong
    fix: str = ""  # what the user should do about it

    def __str__(self) -> str:
        text = f"{self.where}: {self.what}"
        return f"{text} -> {self.fix}" if self.fix else text


class MaiError(Exception):
    """An error caused by user input or environment, reported without a traceback.

    ``problems`` carries every problem found (validation reports them all, not just the first).
    """

    def __init__(self, message: str, problems: list[Problem] | None = None, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.problems = list(problems or [])
        self.hint = hint

    def render(self, limit: int = 50) -> str:
        lines = [f"error: {self.message}"]
        for p in self.problems[:limit]:
            lines.append(f"  - {p}")
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more problems")
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)
