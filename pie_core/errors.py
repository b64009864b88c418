"""One error type for every layer of pie, mapped to a one-line message and an exit code.

Library code (profiler, planner, runners, results) raises these; only the CLI catches them.
This module imports nothing heavy so that torch-free policy code can use it.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 2
EXIT_REGRESSION = 3


class PieError(Exception):
    """An error a user can act on: what went wrong, and what to do about it."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message.rstrip(".")
        if self.hint:
            text += f" (hint: {self.hint.rstrip('.')})"
        return " ".join(text.split())


class BadInput(PieError):
    """The user gave something pie cannot use (exit code 2)."""

    exit_code = EXIT_BAD_INPUT


class RuntimeFailure(PieError):
    """Valid input, but the work failed (exit code 1)."""

    exit_code = EXIT_RUNTIME


def suggest(name: str, choices: Iterable[str], limit: int = 3) -> str:
    """Return ' did you mean a, b?' style text for a mistyped name, or a list of valid names."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(name, choices, n=limit, cutoff=0.5)
    if close:
        return "did you mean " + ", ".join(close) + "?"
    shown = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
    return f"valid names: {shown}"
