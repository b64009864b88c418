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
        text = _without_full_stop(self.message)
        if self.hint:
            text += f" (hint: {_without_full_stop(self.hint)})"
        return " ".join(text.split())


class BadInput(PieError):
    """The user gave something pie cannot use (exit code 2)."""

    exit_code = EXIT_BAD_INPUT


class RuntimeFailure(PieError):
    """Valid input, but the work failed (exit code 1)."""

    exit_code = EXIT_RUNTIME


def _without_full_stop(text: str) -> str:
    """One closing full stop dropped (the line adds its own punctuation); an ellipsis stays."""
    return text[:-1] if text.endswith(".") and not text.endswith("...") else text


MAX_LISTED = 40  # names a hint lists before it says how many more there are


def suggest(name: str, choices: Iterable[str], limit: int = 3) -> str:
    """'did you mean a, b?' for a mistyped name, else the valid names.

    Ordered choices (a list, tuple or dict) are listed in their order, so the caller puts the usual
    ones first; a set is sorted. Beyond MAX_LISTED names the hint says how many it left out.
    """
    ordered = list(dict.fromkeys(sorted(choices) if isinstance(choices, (set, frozenset)) else choices))
    close = difflib.get_close_matches(name, ordered, n=limit, cutoff=0.5)
    if close:
        return "did you mean " + ", ".join(close) + "?"
    shown = ", ".join(ordered[:MAX_LISTED])
    if len(ordered) > MAX_LISTED:
        shown += f" and {len(ordered) - MAX_LISTED} more"
    return f"valid names: {shown}"
